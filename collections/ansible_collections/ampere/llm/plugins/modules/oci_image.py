#!/usr/bin/python
# A custom image captured from a configured (and cleaned) seed instance, tagged with what it holds.
from __future__ import annotations

DOCUMENTATION = r"""
module: oci_image
short_description: Custom image of an ampere-llm seed instance
version_added: 0.1.0
author:
- ampere-llm maintainers (!UNKNOWN)
description:
- Creates a custom image from instance_id and waits until it is AVAILABLE. OCI takes the instance offline while
  it captures the boot volume.
- Idempotent by display name; an image with that name that exists (or is being made) is the result, and nothing
  is captured again. Bake a new version under a new name.
- freeform_tags record what the image holds (llama.cpp commit and flags, llama-cpp-python, model and sha256, collection
  version).
options:
  instance_id:
    type: str
    description: The seed instance OCID.
    required: true
  name:
    type: str
    description: Image display name.
    required: true
  freeform_tags:
    type: dict
    description: Tags of what the image holds (values are cut at 256 characters).
    default: {}
notes:
- Supports check mode and diff mode.
extends_documentation_fragment:
- ampere.llm.oci
"""

EXAMPLES = r"""
- name: Image
  ampere.llm.oci_image:
    compartment_id: "{{ compartment_id }}"
    instance_id: ocid1.instance.oc1..example
    name: ampere-llm-v1
"""

RETURN = r"""
image_id:
  description: Image OCID.
  type: str
  returned: success
lifecycle_state:
  description: Image state.
  type: str
  returned: success
freeform_tags:
  description: Image tags.
  type: dict
  returned: success
"""

from ansible_collections.ampere.llm.plugins.module_utils.oci_common import OciModule
from ansible_collections.ampere.llm.plugins.module_utils.oci_common import core_models as m


def main():
    mod = OciModule(dict(
        instance_id=dict(type="str", required=True),
        name=dict(type="str", required=True),
        freeform_tags=dict(type="dict", default={}),
    ))
    p, o = mod.params, mod.oci
    tags = {k: str(v)[:256] for k, v in p["freeform_tags"].items()}  # OCI caps tag values at 256 chars

    def body():
        cur = o.find(o.compute.list_images, p["compartment_id"], name=p["name"])
        if cur is None:
            o.call(o.compute.get_instance, p["instance_id"])  # a wrong seed OCID fails here, clearly
            after = dict(name=p["name"], instance_id=p["instance_id"], freeform_tags=tags)
            if mod.check_mode:
                return mod.result(True, dict(image_id=None, lifecycle_state=None, freeform_tags=tags), after=after)
            cur = o.call(o.compute.create_image, m.CreateImageDetails(
                compartment_id=p["compartment_id"], instance_id=p["instance_id"], display_name=p["name"],
                freeform_tags=tags)).data
            changed = True
        else:
            changed = False
            if cur.freeform_tags != tags and tags:
                mod.warn(f"image {p['name']} exists with other tags: it was not baked from this build; "
                         f"bake under a new name to capture the current seed")
        if not mod.check_mode:
            cur = o.wait(o.compute.get_image, cur.id, {"AVAILABLE"}, "image")
        return mod.result(changed, dict(image_id=cur.id, lifecycle_state=cur.lifecycle_state,
                                        freeform_tags=cur.freeform_tags), after=dict(name=p["name"]) if changed else {})

    mod.run(body)


if __name__ == "__main__":
    main()
