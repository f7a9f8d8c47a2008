"""The fixture calibrations the library's tests load are what ``python -m calibration.synthetic`` fits now."""

import json

from conftest import CALIBRATIONS
from conftest import probe_layers as library_tests_probe_layers

from calibration.synthetic import FIXTURES, probe_layers, write_fixtures


def test_the_library_tests_probe_layers_are_the_fixtures():
    assert all(library_tests_probe_layers(signal) == probe_layers(signal) for signal in (1.0, 3.0, 7.0))


def test_the_committed_fixture_calibrations_are_what_the_synthetic_sweeps_fit(tmp_path):
    written = write_fixtures(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in CALIBRATIONS.glob("*.json"))
    assert len(written) == len(FIXTURES)
    for path in written:
        fresh, committed = json.loads(path.read_text()), json.loads((CALIBRATIONS / path.name).read_text())
        for description in (fresh, committed):
            del description["versions"], description["sha256"]  # the pickle's bytes follow the library versions
        assert fresh == committed, f"{path.name} is stale: run `python -m calibration.synthetic`"
