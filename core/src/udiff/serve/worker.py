"""The one worker per device: it owns the models, takes batches from the queue and runs them a
step at a time, so that progress is reported and a cancelled job leaves its batch between steps.

Each job's initial noise comes from its own generator seeded with the job's seed, drawn with the
job's shape, exactly as :meth:`Pipeline.sample_tensor` draws it, so a batched image equals the
library's within float rounding. A stochastic sampler (DDPM) also draws noise at every step; its
jobs run alone, with the same generator, as ``sample_tensor`` does.
"""

from __future__ import annotations

import sys
import threading
import time

import torch

from ..sampling.pipeline import Denoising
from .jobs import Job, JobQueue
from .runs import ServedRun


class Worker:
    def __init__(self, runs: dict[str, ServedRun], queue: JobQueue) -> None:
        self.runs, self.queue = runs, queue
        self.stop = threading.Event()
        self.batches, self.batched_images = 0, 0  # mean batch size = images / batches

    def run(self) -> None:
        while not self.stop.is_set():
            jobs = self.queue.take()
            if jobs:
                self.execute(jobs)
                self.queue.last_end = time.monotonic()

    def execute(self, jobs: list[Job], retry: bool = True) -> None:
        """Run one batch; a failure fails its jobs and the server goes on. Out of CUDA memory,
        a batch of several jobs is split in two and each half retried once."""
        try:
            self._denoise(jobs)
        except torch.cuda.OutOfMemoryError as e:
            torch.cuda.empty_cache()
            if retry and len(jobs) > 1:
                half = len(jobs) // 2
                print(f"udiff serve: out of memory on a batch of {len(jobs)} jobs; retrying as "
                      f"{half} + {len(jobs) - half}", file=sys.stderr, flush=True)
                for part in (jobs[:half], jobs[half:]):
                    self.execute([j for j in part if not j.done], retry=False)
                return
            self._fail(jobs, e)
        except Exception as e:  # noqa: BLE001 -- a batch's failure must not stop the server
            self._fail(jobs, e)

    @staticmethod
    def _fail(jobs: list[Job], error: Exception) -> None:
        line = (str(error).strip().splitlines() or [""])[0]
        message = f"generation failed: {type(error).__name__}: {line}"
        print(f"udiff serve: {message} ({len(jobs)} job(s))", file=sys.stderr, flush=True)
        for job in jobs:
            job.finish("failed", error=message)

    @torch.no_grad()
    def _denoise(self, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if not j.done]
        if not jobs:
            return
        first = jobs[0].work
        pipe = self.runs[first.run].pipe
        generators = [torch.Generator("cpu").manual_seed(j.work.spec.seed) for j in jobs]
        noise = torch.cat([torch.randn((j.work.images, *pipe.latent_shape), generator=g)
                           for j, g in zip(jobs, generators, strict=True)])  # [N, c, h, w]
        labels = torch.tensor([x for j in jobs for x in j.work.labels])  # [N]
        size = len(labels)
        for job in jobs:
            job.start(size)
        self.batches, self.batched_images = self.batches + 1, self.batched_images + size
        # a fresh sampler per batch (no state shared between batches), built here once
        loop = Denoising(pipe, labels, noise, first.spec,
                         generator=generators[0] if first.stochastic else None)
        active = jobs
        for i, t in enumerate(loop.timesteps):
            gone = [j for j in active if j.cancel_requested.is_set()]
            if gone:  # the cancelled rows leave; the rest of the batch goes on unchanged
                loop.keep(torch.cat([torch.full((j.work.images,), j not in gone)
                                     for j in active]))
                for job in gone:
                    job.finish("cancelled")
                active = [j for j in active if j not in gone]
                if not active:
                    return
            loop.step(t)
            for job in active:
                job.advance(i + 1)
        images = pipe.decode(loop.x).float().cpu()  # [N, C, H, W]
        start = 0
        for job in active:
            job.finish("succeeded", images=images[start:start + job.work.images])
            start += job.work.images
