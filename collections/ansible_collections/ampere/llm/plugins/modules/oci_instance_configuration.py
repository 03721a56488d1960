#!/usr/bin/python
# The launch template of the pool's nodes: image, shape (A2 Flex by default), network, user-data.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_instance_configuration
short_description: Instance configuration (launch template) for ampere-llm pool nodes
version_added: 0.1.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- OCI instance configurations cannot be changed once made. This module looks for a configuration called name whose
  ampere-llm-spec tag is the hash of the desired launch details, and creates one only when none matches.
- A new image or shape therefore gives a new configuration; the pool moves to it through rollout.yml (oci_rollout).
options:
  name:
    type: str
    description: Display name.
    default: ampere-llm-node
  image_id:
    type: str
    description: Image OCID; required with state=present.
  subnet_id:
    type: str
    description: Node subnet OCID; required with state=present.
  state:
    type: str
    description: present makes sure it exists; absent deletes every configuration of that name.
    default: present
    choices:
    - present
    - absent
  shape:
    type: str
    description: A1/A2 Flex (Arm) or an x86 Flex shape; the image must match its architecture.
    default: VM.Standard.A2.Flex
  ocpus:
    type: float
    description: OCPUs of a Flex shape (one A2 OCPU is two cores).
    default: 2
  memory_gbs:
    type: float
    description: Memory of a Flex shape.
    default: 16
  boot_volume_gbs:
    type: int
    description: Boot volume size.
    default: 50
  assign_public_ip:
    type: bool
    description: Public IP on the nodes (egress without a NAT gateway).
    default: true
  ssh_authorized_keys:
    type: str
    description: Public SSH key(s) for the default user.
    default: ''
  user_data:
    type: str
    description: cloud-init user-data, plain text (encoded here).
    default: ''
notes:
- Supports check mode and diff mode.
extends_documentation_fragment:
- ampere.llm.oci
"""

EXAMPLES = r"""
- name: Launch template
  ampere.llm.oci_instance_configuration:
    compartment_id: "{{ compartment_id }}"
    image_id: "{{ image_id }}"
    subnet_id: "{{ network.node_subnet_id }}"
"""

RETURN = r"""
instance_configuration_id:
  description: Instance configuration OCID.
  type: str
  returned: success
spec_hash:
  description: Hash of the launch details.
  type: str
  returned: success
"""

import base64

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import STATE, OciModule, spec_hash
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import core_models as m


def main():
    mod = OciModule(dict(
        name=dict(type="str", default="ampere-llm-node"),
        image_id=dict(type="str"),
        subnet_id=dict(type="str"),
        state=STATE,
        shape=dict(type="str", default="VM.Standard.A2.Flex"),
        ocpus=dict(type="float", default=2),
        memory_gbs=dict(type="float", default=16),
        boot_volume_gbs=dict(type="int", default=50),
        assign_public_ip=dict(type="bool", default=True),
        ssh_authorized_keys=dict(type="str", default="", no_log=False),  # public keys: not secret
        user_data=dict(type="str", default=""),
    ), required_if=[("state", "present", ["image_id", "subnet_id"])])
    p, o = mod.params, mod.oci
    spec = {k: p[k] for k in ("image_id", "subnet_id", "shape", "ocpus", "memory_gbs", "boot_volume_gbs",
                              "assign_public_ip", "ssh_authorized_keys", "user_data")}
    digest = spec_hash(spec)
    metadata = {}
    if p["ssh_authorized_keys"]:
        metadata["ssh_authorized_keys"] = p["ssh_authorized_keys"]
    if p["user_data"]:
        metadata["user_data"] = base64.b64encode(p["user_data"].encode()).decode()

    def body():
        if p["state"] == "absent":  # every configuration of that name (one per image ever rolled)
            named = [c for c in o.list_all(o.management.list_instance_configurations, p["compartment_id"])
                     if c.display_name == p["name"]]
            if not mod.check_mode:
                for c in named:
                    o.call(o.management.delete_instance_configuration, c.id)
            return mod.result(bool(named), dict(instance_configuration_id=None, spec_hash=None),
                              before=dict(deleted=[c.id for c in named]))
        same = [c for c in o.list_all(o.management.list_instance_configurations, p["compartment_id"])
                if c.display_name == p["name"] and (c.freeform_tags or {}).get("ampere-llm-spec") == digest]
        if same:
            return mod.result(False, dict(instance_configuration_id=same[0].id, spec_hash=digest))
        after = dict(name=p["name"], **{k: v for k, v in spec.items() if k != "user_data"})
        if mod.check_mode:
            return mod.result(True, dict(instance_configuration_id=None, spec_hash=digest), after=after)
        o.call(o.compute.get_image, p["image_id"])  # fail early, and clearly, on a wrong image OCID
        flex = p["shape"].endswith(".Flex")
        launch = m.InstanceConfigurationLaunchInstanceDetails(
            compartment_id=p["compartment_id"], shape=p["shape"], metadata=metadata,
            shape_config=m.InstanceConfigurationLaunchInstanceShapeConfigDetails(
                ocpus=p["ocpus"], memory_in_gbs=p["memory_gbs"]) if flex else None,
            source_details=m.InstanceConfigurationInstanceSourceViaImageDetails(
                image_id=p["image_id"], boot_volume_size_in_gbs=p["boot_volume_gbs"]),
            create_vnic_details=m.InstanceConfigurationCreateVnicDetails(
                subnet_id=p["subnet_id"], assign_public_ip=p["assign_public_ip"]))
        cfg = o.call(o.management.create_instance_configuration, m.CreateInstanceConfigurationDetails(
            compartment_id=p["compartment_id"], display_name=p["name"], freeform_tags={"ampere-llm-spec": digest},
            instance_details=m.ComputeInstanceDetails(launch_details=launch))).data
        return mod.result(True, dict(instance_configuration_id=cfg.id, spec_hash=digest), after=after)

    mod.run(body)


if __name__ == "__main__":
    main()
