"""Prototype of issue 20's method on the flow demo UNet: teacher pairs -> student on K-step t."""
import copy, sys, time, json
import torch, torch.nn.functional as F
sys.path.insert(0, "/tmp/wt20/core/src")
import udiff
from udiff.training.distill import FewStepTimesteps, teacher_pairs
from udiff.evaluation.evaluate import Judge

run, K, N, STEPS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
TS, SS, G = sys.argv[6], sys.argv[7], float(sys.argv[8])
torch.manual_seed(0)
judge = Judge(run, 0, progress=False)
pipe = judge.pipe
t0 = time.time()
z, x0, y = teacher_pairs(pipe, N, 20, G, TS, seed=1)
t_pairs = time.time() - t0
PT = sys.argv[9] if len(sys.argv) > 9 else None
teacher_cfg = pipe.scheduler_config
if PT:
    pipe.scheduler_config = teacher_cfg.model_copy(update={"prediction_type": PT})
sched = pipe.scheduler()
fs = FewStepTimesteps(sched, pipe.scheduler(SS), K)
pipe.scheduler_config = teacher_cfg
print("pairs", N, f"{t_pairs:.1f}s", "timesteps", fs.choices.tolist(), flush=True)
student = copy.deepcopy(pipe.denoiser).train().requires_grad_(True)
cond = copy.deepcopy(pipe.conditioner).train().requires_grad_(True)
params = [*student.parameters(), *cond.parameters()]
opt = torch.optim.AdamW(params, lr=float(sys.argv[5]) if len(sys.argv) > 5 else 5e-4)
ema = [p.detach().clone() for p in params]
g = torch.Generator().manual_seed(2)
t0 = time.time()
for step in range(STEPS):
    idx = torch.randint(N, (48,), generator=g)
    ts = fs.sample_timesteps(48, "cpu", generator=g)
    xt = sched.add_noise(x0[idx], z[idx], ts)
    pred = student(xt, ts, cond(y[idx]))
    pred = pred[:, :x0.shape[1]]
    loss = F.mse_loss(pred, sched.target(x0[idx], z[idx], ts))
    opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        for e, p in zip(ema, params): e.lerp_(p, 1 - min(0.99, (1 + step) / (10 + step)))
    if step % 100 == 0: print(step, round(loss.item(), 4), flush=True)
t_train = time.time() - t0
with torch.no_grad():
    for e, p in zip(ema, params): p.copy_(e)
teacher_den, teacher_cond = pipe.denoiser, pipe.conditioner
res = {}
for who in ("teacher", "student"):
    if who == "student":
        pipe.denoiser, pipe.conditioner = student.eval(), cond.eval()
        if PT:
            pipe.scheduler_config = teacher_cfg.model_copy(update={"prediction_type": PT})
    for k in ([20, 4, 2, 1] if who == "teacher" else [4, 2, 1]):
        g_ = G if who == "teacher" else 1.0
        iv = None
        t1 = time.time()
        imgs, labs = pipe.sample_tensor(range(10), 30, k, g_, 0, TS if (who == "teacher" and k == 20) else SS, guidance_interval=iv)
        dt = time.time() - t1
        m, _ = judge.score(imgs, labs)
        res[f"{who}{k}"] = (round(m["label_accuracy"], 3), round(m["fid"], 1), round(m["diversity"], 2), round(dt * 1000 / 300, 1))
        print(who, k, res[f"{who}{k}"], flush=True)
print("pairs s", round(t_pairs, 1), "train s", round(t_train, 1))
