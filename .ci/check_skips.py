#!/usr/bin/env python3
"""Fail a test run that skipped a test for a reason CI does not expect.

Usage: ``check_skips.py REPORT.xml [ALLOW_LIST]``: REPORT.xml is pytest's ``--junitxml`` report; ALLOW_LIST
(default: ``expected_skips.txt`` beside this script) holds one regular expression per line, matched against the
start of each skip's reason (``re.match``); ``#`` starts a comment, blank lines are ignored. Every skip whose
reason no pattern matches is listed on stderr and the exit status is 1; otherwise 0. A skip CI expects is one that
holds by design (a sanity check declared skipped with its reason, a GPU-only test on a CPU runner); a missing
package or plugin in CI is never expected: it is an installation error, and so is a silent skip.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

DEFAULT_ALLOW_LIST = Path(__file__).with_name("expected_skips.txt")


def read_allow_list(path: Path) -> list[re.Pattern[str]]:
    """The compiled patterns of an allow-list file (comments and blank lines dropped)."""
    patterns = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            patterns.append(re.compile(text))
    return patterns


def skipped_tests(report: Path) -> list[tuple[str, str]]:
    """``(test id, reason)`` of every skipped test case of a JUnit XML report."""
    skipped = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for child in case:
            if child.tag == "skipped":
                test = f"{case.get('classname', '')}::{case.get('name', '')}"
                reason = child.get("message", "")
                skipped.append((test, reason.removeprefix("Skipped: ").strip()))
    return skipped


def unexpected_skips(skipped: list[tuple[str, str]], patterns: list[re.Pattern[str]]) -> list[tuple[str, str]]:
    """The skips whose reason matches no allow-list pattern."""
    return [(test, reason) for test, reason in skipped if not any(p.match(reason) for p in patterns)]


def main(argv: list[str]) -> int:
    """Check one report against the allow-list; returns the exit status."""
    if not 1 <= len(argv) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    report = Path(argv[0])
    allow_list = Path(argv[1]) if len(argv) == 2 else DEFAULT_ALLOW_LIST
    skipped = skipped_tests(report)
    unexpected = unexpected_skips(skipped, read_allow_list(allow_list))
    for test, reason in unexpected:
        print(f"unexpected skip: {test}: {reason}", file=sys.stderr)
    if unexpected:
        print(f"{len(unexpected)} of {len(skipped)} skips are not expected in CI; fix the cause or, when the skip "
              f"holds by design, add its reason to {allow_list}", file=sys.stderr)
        return 1
    print(f"{len(skipped)} skips, all expected ({allow_list.name})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
