"""The reliability catalogue (docs/reliability.md) lists exactly the reliability tests."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from tests.reliability_report import CASES, ReliabilityReport


def reliability_tests() -> set[str]:
    names: set[str] = set()
    folder = Path(__file__).parent
    for info in pkgutil.iter_modules([str(folder)]):
        if not info.name.startswith("test_reliability_") or info.name.endswith("_catalog"):
            continue
        module = importlib.import_module(f"tests.{info.name}")
        for name, obj in vars(module).items():
            if not (name.startswith("test_") and callable(obj)):
                continue
            # Running a case with and without Discord latency is one case of the catalogue.
            marks = [
                m
                for m in getattr(obj, "pytestmark", [])
                if m.name == "parametrize" and m.args[0] != "latency"
            ]
            if marks:
                names |= {
                    f"{name}[{value[0] if isinstance(value, tuple) else value}]"
                    for value in marks[0].args[1]
                }
            else:
                names.add(name)
    return names


def test_catalogue_matches_the_tests() -> None:
    catalogued = [c.test for c in CASES]
    assert len(catalogued) == len(set(catalogued)), "a test is catalogued twice"
    assert set(catalogued) == reliability_tests()


def test_table_is_deterministic_apart_from_outcomes(tmp_path: Path) -> None:
    first, second = ReliabilityReport(tmp_path / "a.md"), ReliabilityReport(tmp_path / "b.md")
    assert first.render() == second.render()
    table = [line for line in first.render().splitlines() if line.startswith("| ") and "`" in line]
    assert len(table) == len(CASES) and all(line.endswith("| not run |") for line in table)


def test_run_variants_map_to_their_case() -> None:
    """A case run with latency on or off, on either Redis backend, is still that case."""
    case = ReliabilityReport.case_of
    fault = "tests/test_reliability_llm.py::test_llm_fault"
    assert case(f"{fault}[429-retry-after-none]") is case(f"{fault}[429-retry-after]")
    assert case(f"{fault}[500-realistic]") is case(f"{fault}[500]") is not None
    killed = "tests/test_reliability_redis.py::test_redis_killed_mid_conversation_and_restarted"
    assert case(f"{killed}[single]") is case(killed) is not None
    assert case(f"{killed}[cluster]") is case(killed)
    assert case(f"{fault}[unknown-none]") is None
