"""The committed sample files are exactly what `tests/fixtures/sample_files.py` writes, so every
figure in them can be traced to the code that made it, and the tests need nothing outside the
repository."""

from tests.fixtures.sample_files import SAMPLES, files, quarter_hour_load


def test_committed_sample_files_are_the_ones_the_generator_writes():
    made = files()

    assert sorted(path.name for path in SAMPLES.iterdir()) == sorted(made)
    for name, data in made.items():
        assert (SAMPLES / name).read_bytes() == data, f"{name} differs: run the generator again"


def test_sample_day_has_a_night_base_below_its_evening_peak():
    for home in range(3):
        night = quarter_hour_load(home, 12)  # 03:00
        evening = quarter_hour_load(home, 78)  # 19:30
        assert 0 < night < evening
