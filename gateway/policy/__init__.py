"""Policy: decision values, the layered engine and its file format (evaluation is pure: no I/O).

``EXAMPLE_POLICY`` and ``EXAMPLE_POLICY_TESTS`` are the support-agent example and its test cases, shipped as
package data and written by ``agentaudit dev``.
"""

from pathlib import Path

# Read next to this file rather than through importlib.resources, which imports zipfile, tempfile, shutil and the
# compression modules with it (~0.5 MiB of every sidecar's memory, issue 20 part 1): the package is always
# installed as files (a wheel, an editable install, the image), never run from a zip.
_HERE = Path(__file__).parent

EXAMPLE_POLICY = (_HERE / "example_policy.yaml").read_text(encoding="utf-8")
EXAMPLE_POLICY_TESTS = (_HERE / "example_policy_tests.yaml").read_text(encoding="utf-8")
