# The options every ampere.llm oci_* module shares (module_utils/oci_common.py's COMMON_ARGS),
# documented once: modules say `extends_documentation_fragment: [ampere.llm.oci]`.
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  compartment_id:
    type: str
    description: Compartment OCID.
    required: true
  auth_type:
    type: str
    default: api_key
    choices:
    - api_key
    - instance_principal
    description: 'How to authenticate: the OCI config file''s API key, or instance principals (env OCI_CLI_AUTH).'
  config_file:
    type: path
    default: ~/.oci/config
    description: OCI config file (env OCI_CONFIG_FILE).
  config_profile:
    type: str
    default: DEFAULT
    description: Profile in the config file (env OCI_CONFIG_PROFILE).
  region:
    type: str
    description: Override the profile's region (env OCI_REGION).
  endpoint:
    type: str
    description: TEST ONLY - base URL of the local OCI stand-in of tests/oci (env AMPERE_LLM_OCI_ENDPOINT).
  wait_timeout:
    type: int
    default: 1800
    description: Seconds to wait for a resource or a work request to finish.
  poll_interval:
    type: float
    default: 5.0
    description: Seconds between state polls (env AMPERE_LLM_OCI_POLL_INTERVAL).
requirements:
- oci (Python SDK) on the control node
notes:
- Calls are retried by the SDK's retry strategy on 409 IncorrectState/Conflict, 429 and 5xx, with back-off; every create
  carries an opc-retry-token, so a retried create never makes two resources.
- See docs/oci.md for the IAM policy these modules need.
"""
