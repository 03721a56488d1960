# Test-only Ansible callback: every task result, as JSON, into the file named by $RESULTS_FILE.
# (ansible-core 2.19 moved the json stdout callback to ansible.posix, which is not installed here;
# this one also leaves the default human-readable output in place for failure logs.)
import json
import os

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "results_file"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.results = []

    def _add(self, result, status):
        self.results.append(dict(task=result._task.get_name(), host=result._host.get_name(), status=status,
                                 result=self._clean_results(dict(result._result), result._task.action)
                                 or result._result))

    def v2_runner_on_ok(self, result):
        self._add(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._add(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._add(result, "skipped")

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["RESULTS_FILE"], "w") as f:
            json.dump(self.results, f, default=str)
