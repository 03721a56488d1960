"""Every oci_* module documents exactly the options it accepts, with the same defaults (ansible-doc reads
the former, Ansible enforces the latter: they must not drift). The shared options are documented once,
in the collection's doc fragment (plugins/doc_fragments/oci.py), which every module extends."""
import importlib

import pytest
import yaml

MODULES = ["oci_preflight", "oci_network", "oci_load_balancer", "oci_image", "oci_instance_configuration",
           "oci_instance_pool", "oci_autoscaling", "oci_rollout"]


class Captured(Exception):
    pass


@pytest.mark.parametrize("name", MODULES)
def test_documentation_matches_argument_spec(name, monkeypatch):
    from ansible_collections.ampere.llm.plugins.module_utils import oci_common

    mod = importlib.import_module(f"ansible_collections.ampere.llm.plugins.modules.{name}")
    spec = {}

    class Fake:
        def __init__(self, argument_spec, **kw):
            spec.update(oci_common.COMMON_ARGS, **argument_spec)
            raise Captured

    monkeypatch.setattr(mod, "OciModule", Fake)
    with pytest.raises(Captured):
        mod.main()
    from ansible_collections.ampere.llm.plugins.doc_fragments.oci import ModuleDocFragment

    doc = yaml.safe_load(mod.DOCUMENTATION)
    assert doc["module"] == name
    assert doc["extends_documentation_fragment"] == ["ampere.llm.oci"]
    shared = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)["options"]
    assert not set(shared) & set(doc["options"]), "shared options are documented in the fragment only"
    options = {**shared, **doc["options"]}
    assert set(options) == set(spec)
    assert set(shared) == set(oci_common.COMMON_ARGS)
    for key in ("EXAMPLES", "RETURN"):
        assert yaml.safe_load(getattr(mod, key)), f"{name} has no {key}"
    for opt, s in spec.items():
        d = options[opt]
        assert d.get("type") == s.get("type", "str"), opt
        assert d.get("default") == s.get("default"), opt
        assert d.get("required", False) == s.get("required", False), opt
        assert d.get("choices") == s.get("choices"), opt
