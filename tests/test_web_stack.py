"""The web stack is at releases with no published advisory, and label-studio-ml 1.0.9 still supplies the
adapter's base class.

label-studio-ml 1.0.9 (its only release) pins Flask 1.1.2, Werkzeug 2.0.2, Jinja2 3.0.3 and itsdangerous
2.0.1. It is installed with ``pip install --no-deps -r requirements-no-deps.txt`` (scripts/install.sh, the
Dockerfile); requirements.txt pins the patched releases and what ``label_studio_ml.model`` imports.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import distribution, version

from packaging.version import Version

from backend.model import LiteSamBackend

#: package → (the first release free of every advisory published against it up to 2026-12, those advisories
#: with the release that fixed each). itsdangerous has none; 2.2.0 is the release Flask 3.1 requires.
FIXED = {
    "flask": ("3.1.3", (
        "GHSA-m2qf-hxjv-5gpq / CVE-2023-30861, 2.3.2: a session cookie without Vary: Cookie, cached by proxies",
        "GHSA-4grg-w6v8-c28g / CVE-2025-47278, 3.1.1: signing with the last of SECRET_KEY_FALLBACKS",
        "GHSA-68rp-wp8r-4726, 3.1.3: session not marked accessed by `in` and `len` (no Vary: Cookie)",
    )),
    "werkzeug": ("3.1.9", (
        "GHSA-xg9f-g7g7-2323 / CVE-2023-25577, 2.2.3: multipart bodies with many fields exhaust CPU and memory",
        "GHSA-px8h-6qxv-m22q / CVE-2023-23934, 2.2.3: nameless cookies shadow other cookies",
        "GHSA-hrfv-mqp8-q5rw / CVE-2023-46136, 3.0.1: slow parsing of large multipart parts (DoS)",
        "GHSA-2g68-c3qc-8985 / CVE-2024-34069, 3.0.3: the debugger reachable from an attacker's domain",
        "GHSA-q34m-jh98-gwm2 / CVE-2024-49767, 3.0.6: max_form_memory_size bypassed by large non-file fields",
        "GHSA-f9vj-2wh5-fj8j / CVE-2024-49766, 3.0.6: safe_join unsafe for UNC paths on Windows",
        "GHSA-hgf8-39gv-g3f2 / CVE-2025-66221, 3.1.4: safe_join allows Windows device names",
        "GHSA-87hc-h4r5-73f7, 3.1.5: safe_join allows more Windows device names",
        "GHSA-29vq-49wr-vm6x, 3.1.6: safe_join allows device names in multi-segment paths on Windows",
        "GHSA-g6x2-hccm-hh4m, 3.1.9: safe_join allows device names with empty NTFS stream markers",
    )),
    "jinja2": ("3.1.6", (
        "GHSA-h5c8-rqwp-cp95 / CVE-2024-22195, 3.1.3: xmlattr accepts keys with spaces (attribute injection)",
        "GHSA-h75v-3vvj-5mfj / CVE-2024-34064, 3.1.4: xmlattr accepts keys with / > = (attribute injection)",
        "GHSA-gmj6-6f8f-6699 / CVE-2024-56201, 3.1.5: code execution through a crafted template file name",
        "GHSA-q2x7-8rv6-6q7h / CVE-2024-56326, 3.1.5: sandbox escape through str.format",
        "GHSA-cpwx-vrp4-4pq7 / CVE-2025-27516, 3.1.6: sandbox escape through the |attr filter",
    )),
    "itsdangerous": ("2.2.0", ()),
}

#: label-studio-ml 1.0.9's own pins, which the --no-deps install leaves unmet on purpose.
OLD_PINS = {"flask": "1.1.2", "werkzeug": "2.0.2", "jinja2": "3.0.3", "itsdangerous": "2.0.1"}


def test_no_installed_web_stack_package_is_older_than_its_fixed_release():
    too_old = {
        name: f"{version(name)} < {fixed}: {'; '.join(advisories)}"
        for name, (fixed, advisories) in FIXED.items()
        if Version(version(name)) < Version(fixed)
    }
    assert not too_old, too_old


def test_the_adapter_is_label_studio_ml_1_0_9s_base_class():
    from label_studio_ml.model import LabelStudioMLBase

    assert version("label-studio-ml") == "1.0.9"
    assert issubclass(LiteSamBackend, LabelStudioMLBase)
    files = {str(distribution("label-studio-ml").locate_file(f)) for f in distribution("label-studio-ml").files}
    assert sys.modules[LabelStudioMLBase.__module__].__file__ in files


def test_the_base_class_module_imports_no_flask():
    """Why the --no-deps install is safe: ``label_studio_ml.model`` loads with Flask, Werkzeug and Jinja2
    made unimportable."""
    code = (
        "import sys\n"
        "for name in ('flask', 'werkzeug', 'jinja2', 'itsdangerous'): sys.modules[name] = None\n"
        "from label_studio_ml.model import LabelStudioMLBase\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr


def test_pip_check_finds_only_label_studio_mls_web_stack_pins_unmet():
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    unmet = re.compile(r"label-studio-ml 1\.0\.9 has requirement (\S+)==(\S+), but you have (\S+) (\S+)\.")
    problems = [unmet.fullmatch(line) for line in completed.stdout.strip().splitlines()]
    assert all(problems), completed.stdout
    assert {m.group(1).lower(): m.group(2) for m in problems} == OLD_PINS
    assert all(m.group(4) == version(m.group(3)) for m in problems)
