"""bench/sass_census.py's reading of cuobjdump output (canned text: no CUDA tools needed)."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sass_census", REPO / "bench" / "sass_census.py")
sass_census = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sass_census)

SASS = """
	code for sm_90
		Function : k_cols
	.headerflags	@"EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                  /* 0x00000a00ff017b82 */
        /*0010*/                   S2R R0, SR_TID.X ;                      /* 0x0000000000007919 */
        /*0020*/                   LDS.128 R4, [R0] ;                      /* 0x0000000000047984 */
        /*0030*/              @!P0 FFMA R4, R5, R6, R4 ;                   /* 0x0000000605048223 */
        /*0040*/                   HMMA.16816.F32.BF16 R8, R12, R14, R8 ;  /* 0x0000000e0c08723c */
        /*0050*/               @P1 BRA 0x70 ;                              /* 0x0000000000141947 */
        /*0060*/                   FFMA R4, R5, R6, R4 ;                   /* 0x0000000605047223 */
        /*0070*/              @!P2 BRA 0x20 ;                              /* 0xfffffffc00e8a947 */
        /*0080*/                   EXIT ;                                  /* 0x000000000000794d */
        /*0090*/                   BRA 0x90;                               /* 0xfffffffc00fc7947 */
		..........
		Function : k_rows
        /*0000*/                   EXIT ;                                  /* 0x000000000000794d */
"""

RESOURCES = """
Resource usage:
 Common:
  GLOBAL:0
 Function k_cols:
  REG:246 STACK:0 SHARED:47616 LOCAL:0 CONSTANT[0]:816 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function k_rows:
  REG:64 STACK:808 SHARED:4352 LOCAL:0 CONSTANT[0]:896 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_loops_and_census():
    kernels = sass_census.parse_sass(SASS)
    assert set(kernels) == {"k_cols", "k_rows"} and len(kernels["k_cols"]) == 10
    code = kernels["k_cols"]
    # one loop (0x20..0x70); the forward branch and the end-of-kernel BRA self are not loops
    assert sass_census.loops(code) == [(0x20, 0x70)]
    part = sass_census.census(code, 0x20, 0x70)
    assert part["instructions"] == 6
    assert part["opcodes"] == {"FFMA": 2, "LDS": 1, "HMMA": 1, "BRA": 2}


def test_resources_and_opcodes():
    res = sass_census.parse_resources(RESOURCES)
    assert res["k_cols"]["REG"] == 246 and res["k_rows"]["STACK"] == 808
    assert sass_census.opcode("@!P3 LDS.128 R8, [R2]") == "LDS"
    assert sass_census.opcode("IMAD.U32 R4, R5, 0x10000, RZ") == "IMAD"


def test_a_path_given_piece_by_piece_is_summed():
    """Several --range pieces (one path of a loop) are counted each and in total, ends included."""
    code = sass_census.parse_sass(SASS)["k_cols"]
    entry = sass_census.report("k_cols", code, None, [(0x20, 0x50), (0x70, 0x70)])
    assert [p["instructions"] for p in entry["ranges"]] == [4, 1]
    assert entry["ranges_total"] == 5
    assert "ranges_total" not in sass_census.report("k_cols", code, None, [(0x20, 0x70)])
