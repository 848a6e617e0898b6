"""Policy: decision values, the layered engine and its file format (evaluation is pure: no I/O).

``EXAMPLE_POLICY`` and ``EXAMPLE_POLICY_TESTS`` are the support-agent example and its test cases, shipped as
package data and written by ``agentaudit dev``.
"""

from importlib import resources

EXAMPLE_POLICY = resources.files(__package__).joinpath("example_policy.yaml").read_text()
EXAMPLE_POLICY_TESTS = resources.files(__package__).joinpath("example_policy_tests.yaml").read_text()
