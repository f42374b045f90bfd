"""Session 35: how far apart the pre-norm backward check's three references are (CPU, float64):
A: u unrounded (call 1), B: u's value rounded to bf16 straight-through (committed), C: a cast
(call 2: rounds du too). Same data generation as check_prenorm_backward.py with a CPU generator.

    python3 bench/results/session35-reference-semantics.py
"""
import sys, torch, inspect, types
sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), "..", "..", "test", "Integration", "GPU", "harness"))
import check_prenorm_backward as H
src = inspect.getsource(H.reference)
# A: u unrounded (call 1's reference); B: straight-through (committed); Cst: a cast (call 2's).
srcA = src.replace("u = u64 + (u64.to(v[\"x\"].dtype).double() - u64).detach()", "u = u64")
srcC = src.replace("u = u64 + (u64.to(v[\"x\"].dtype).double() - u64).detach()", "u = u64.to(v[\"x\"].dtype).double()")
assert srcA != src and srcC != src
ns = dict(H.__dict__)
exec(srcA.replace("def reference(", "def refA("), ns); exec(srcC.replace("def reference(", "def refC("), ns)
def relerr(o, r):
    return float(torch.linalg.norm(o - r) / torch.linalg.norm(r))
for n, C, T in ((4, 512, 1000), (2, 1000, 1000), (4, 4096, 1000)):
    d = torch.bfloat16; M = n * n + 2 * n
    gen = torch.Generator().manual_seed(T + 7 * C + n)
    rnd = lambda *s: torch.randn(*s, generator=gen)
    v = dict(x=rnd(T, n, C).to(d), y=rnd(T, C).to(d), fn=rnd(M, n * C) / (n * C) ** 0.5,
             scale=torch.rand(3, generator=gen) + 0.25, base=rnd(M) * 0.5, g=rnd(T, C).to(d),
             w=(torch.rand(C, generator=gen) + 0.5).to(d), dpost=rnd(T, n), dcomb=rnd(T, n, n),
             dxn=rnd(T, n, C).to(d))
    xv = v["x"].double().reshape(T, n * C)
    r0 = torch.rsqrt((xv * xv).sum(-1, keepdim=True) / (n * C) + H.EPS)
    v["mix"] = ((xv @ v["fn"].double().t()) * r0).float()
    for fname in ("whole", "pre_side"):
        A = ns["refA"](v, n, C, fname, torch); B = H.reference(v, n, C, fname, torch); Cc = ns["refC"](v, n, C, fname, torch)
        print(f"n{n}_c{C} {fname:8s} T={T}", " ".join(f"{k}: B-vs-A {relerr(B[k], A[k]):.2e} C-vs-B {relerr(Cc[k], B[k]):.2e}" for k in ("dfn", "dscale", "dbase")))
