"""How fast a 512-block hot-add reaches a udev monitor: `python -m tests.fakesysfs.bench_netlink`.

Two fake kernels, one with netlink uevents and its peer without, hot-add the same 512 blocks
(one add_memory() call, as a 64 GiB DIMM) and remove them again, alternately. Reported, as
medians: the hot_add request on each (all multicasts are queued when it returns) and their
ratio, and how long pyudev then takes to read the 512 events off a monitor with libudev's
default receive buffer.
"""

from __future__ import annotations

import argparse
import statistics
import time

from . import FakeKernel, TreeSpec

BLOCKS = range(64, 64 + 512)


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=9)
    rounds = parser.parse_args().rounds
    spec = TreeSpec.vm(boot_gib=1)
    with FakeKernel(spec, netlink=True) as emitting, FakeKernel(spec) as peer:
        monitor = emitting.udev_monitor()
        monitor.filter_by('memory')
        monitor.start()
        with_netlink, without, reading = [], [], []
        for _ in range(rounds + 1):  # the first round warms up
            with_netlink.append(_timed(lambda: emitting.hot_add(BLOCKS)))
            without.append(_timed(lambda: peer.hot_add(BLOCKS)))
            got: list = []
            reading.append(_timed(lambda: got.extend(iter(lambda: monitor.poll(0), None))))
            if len(got) != len(BLOCKS):
                raise SystemExit(f'the monitor got {len(got)} of {len(BLOCKS)} events')
            emitting.hot_remove(BLOCKS)
            peer.hot_remove(BLOCKS)
            list(iter(lambda: monitor.poll(0), None))

    def median_ms(samples: list[float]) -> float:
        return statistics.median(samples[1:]) * 1000

    print(f'hot_add of {len(BLOCKS)} blocks, median of {rounds}:')
    print(f'  with netlink uevents  {median_ms(with_netlink):7.2f} ms')
    print(f'  without (peer)        {median_ms(without):7.2f} ms   ratio {median_ms(with_netlink) / median_ms(without):.2f}')
    print(f'  pyudev reading them   {median_ms(reading):7.2f} ms   '
          f'({median_ms(reading) * 1000 / len(BLOCKS):.0f} µs per event)')


if __name__ == '__main__':
    main()
