"""Energy counters' pure logic: which RAPL zones count, wrap-around, joules per token."""

from tandem.runtime.engine.stream import ReplyStats
import pytest

from tandem.runtime.hardware.energy import EnergyMeter, EnergyTrack, Reading, between, package_zones


def zone(root, name, uj, wrap=None, kind=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(f"{kind or 'package-' + name.split(':')[1]}\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    if wrap is not None:
        (d / "max_energy_range_uj").write_text(f"{wrap}\n")
    return d


def test_only_readable_package_zones_count(tmp_path):
    zone(tmp_path, "intel-rapl:0", 5_000_000, 262143328850)
    zone(tmp_path, "intel-rapl:0:0", 1_000_000, kind="core")  # the cores: part of the package
    zone(tmp_path, "intel-rapl:1", 9_000_000, kind="psys")  # a laptop's platform: the package and more
    zone(tmp_path, "intel-rapl:2", "unreadable")
    assert [z.name for z in package_zones(tmp_path)] == ["intel-rapl:0"]
    assert package_zones(tmp_path / "absent") == []
    meter = EnergyMeter(tmp_path, nvml=False, clock=iter(range(0, 1000, 10)).__next__)  # 10 s between readings
    assert meter.available and meter.sources == ["CPU package 0 (RAPL)"]
    a = meter.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("7500000\n")
    used = between(a, meter.read())
    assert used.cpu_j == 2.5 and used.gpu_j is None and used.total_j == 2.5
    assert not EnergyMeter(tmp_path / "absent", nvml=False).available


def test_a_wrapped_counter_counts_once_and_a_doubtful_side_not_at_all():
    wrapped = between(Reading(rapl=(("z", 900, 1000),)), Reading(rapl=(("z", 100, 1000),)))
    assert wrapped.cpu_j == 200 / 1e6
    assert between(Reading(rapl=(("z", 900, 0),)), Reading(rapl=(("z", 100, 0),))).cpu_j is None
    two = (("a", 100, 0), ("b", 100, 0))
    assert between(Reading(rapl=two), Reading(rapl=(("a", 400, 0), ("b", 50, 0)))).cpu_j is None  # not partial
    assert between(Reading(rapl=two), Reading(rapl=(("a", 400, 0),))).cpu_j is None
    assert between(Reading(rapl=two), Reading(rapl=(("a", 400, 0), ("b", 300, 0)))).cpu_j == 500 / 1e6
    gpus = between(Reading(nvml=((0, 1000), (1, 50))), Reading(nvml=((0, 4000), (1, 90))))
    assert gpus.gpu_j == 3.04 and gpus.cpu_j is None
    assert between(Reading(nvml=((0, 1000), (1, 50))), Reading(nvml=((0, 4000), (1, 40)))).gpu_j is None
    # a counter reset read as a wrap: 1 MJ in one second is no reading
    reset = between(Reading(rapl=(("z", 900, 10**12),), at=1.0), Reading(rapl=(("z", 100, 10**12),), at=2.0))
    assert reset.cpu_j is None


def test_a_reply_is_read_often_enough_that_a_counter_wrapping_twice_is_counted(tmp_path):
    """A 65 kJ counter at 250 W wraps every four minutes: the track reads it every `every`
    seconds and adds the pieces."""
    z = zone(tmp_path, "intel-rapl:0", 60_000_000_000, 65_532_610_987)
    meter = EnergyMeter(tmp_path, nvml=False, clock=iter(range(0, 10_000, 100)).__next__)  # 250 W: 100 s a read
    track = EnergyTrack(meter, every=0.0)
    for uj in (20_000_000_000, 45_000_000_000, 5_000_000_000):  # two wraps in the reply
        (z / "energy_uj").write_text(f"{uj}\n")
        track.sample()
    fields = track.fields()
    assert fields["energy_gpu_j"] is None
    assert fields["energy_cpu_j"] == pytest.approx((65_532_610_987 - 60e9 + 20e9 + 25e9 + 65_532_610_987 - 45e9 + 5e9) / 1e6)
    assert EnergyTrack(EnergyMeter(tmp_path / "absent", nvml=False)).fields() == {}


def test_joules_per_token_needs_a_counter_and_tokens():
    base = dict(prompt_tokens=10, cached_tokens=0, queue_s=0.0, ttft_s=0.1, decode_tps=10.0, total_s=1.0)
    assert ReplyStats(completion_tokens=20, **base).joules_per_token is None
    s = ReplyStats(completion_tokens=20, energy_cpu_j=3.0, energy_gpu_j=5.0, **base)
    assert s.energy_j == 8.0 and s.joules_per_token == 0.4 and s.as_dict()["joules_per_token"] == 0.4
    assert ReplyStats(completion_tokens=0, energy_cpu_j=3.0, **base).joules_per_token is None


def test_the_packages_power_limit_is_summed_from_readable_zones(tmp_path):
    from tandem.runtime.hardware.probe import rapl_power_limit_w

    for name, uw, kind in (("intel-rapl:0", "28000000", None), ("intel-rapl:1", "15000000", None),
                           ("intel-rapl:0:0", "9000000", "core"), ("intel-rapl:2", "none", None),
                           ("intel-rapl:3", "45000000", "psys")):
        zone(tmp_path, name, 0, kind=kind)
        (tmp_path / name / "constraint_0_power_limit_uw").write_text(uw)
    assert rapl_power_limit_w(tmp_path) == 43.0
    assert rapl_power_limit_w(tmp_path / "absent") is None
