"""Generation speed of the synthetic world: scenes/s for rendering alone and for write_world end to end
(render + PNG + all training samples + eval files), at 64 px and at 336 px, on this machine's CPU.

Run alone (other jobs on 2 cores distort it): ``python benchmarks/bench_world.py``; the output is kept in
``benchmarks/results/world.txt``.
"""

from __future__ import annotations

import os
import platform
import random
import tempfile
import time

from tinygroundinggpt.world import SceneConfig, generate_scene, write_world


def scenes_per_second(image_size: int, n: int) -> float:
    config = SceneConfig()
    start = time.perf_counter()
    for i in range(n):
        generate_scene(random.Random(i), image_size, config)
    return n / (time.perf_counter() - start)


def world_per_second(image_size: int, n_train: int, n_eval: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_world(tmp, n_train, n_eval, seed=0, image_size=image_size, progress=False)
        return (n_train + 2 * n_eval) / (time.perf_counter() - start)


def main() -> None:
    load = os.getloadavg()[0]
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores, single process")
    print(f"load average before: {load:.2f} (anything above ~0.5 means other jobs share the cores)")
    for size, n in ((64, 2000), (336, 400)):
        print(f"generate_scene {size:>3} px: {scenes_per_second(size, n):7.1f} scenes/s  ({n} scenes, 2-5 objects)")
    for size, n_train, n_eval in ((64, 1000, 100), (336, 200, 20)):
        rate = world_per_second(size, n_train, n_eval)
        print(f"write_world    {size:>3} px: {rate:7.1f} scenes/s  ({n_train} train + {2 * n_eval} eval, all files)")


if __name__ == "__main__":
    main()
