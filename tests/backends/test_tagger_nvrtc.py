"""The CuPy element-wise kernels of the tagger's LSTM cell (`backends/cuda.py`) compiled to
PTX with NVRTC, for float32 and float64, without a device.

CuPy wraps an ElementwiseKernel's body in a kernel of its own making; here the body goes into
a hand-written kernel that declares its parameters the way CuPy does (a raw parameter is an
array indexed by the body, any other is the element i of its array, written through a
reference when it is an output), so that a mistake in the body's C++ fails here rather than on
a user's first GPU run. What CuPy's own wrapper adds is not checked.
"""
import pytest

from nnmnist.backends import cuda as backend

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="NVRTC (cuda-python) is not installed")

FORWARD = """
extern "C" __global__ void cell_forward(const T* c_prev_, long long H, T* z, T* c_, T* tc_,
                                        T* h_, long long n) {
    const ptrdiff_t i = (ptrdiff_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const T c_prev = c_prev_[i];
    T& c = c_[i];
    T& tc = tc_[i];
    T& h = h_[i];
    BODY
}
"""
BACKWARD = """
extern "C" __global__ void cell_backward(const T* dh_, const T* dc_, const T* acts,
                                         const T* c_prev_, const T* tc_, long long H, T* dz,
                                         T* dc_prev_, long long n) {
    const ptrdiff_t i = (ptrdiff_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const T dh = dh_[i];
    const T dc = dc_[i];
    const T c_prev = c_prev_[i];
    const T tc = tc_[i];
    T& dc_prev = dc_prev_[i];
    BODY
}
"""


def ptx_of(source, name):
    """NVRTC's PTX for `source`, or the compiler's log as the failure."""
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    err, = nvrtc.nvrtcCompileProgram(prog, 1, [b"--gpu-architecture=compute_80"])
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        pytest.fail(f"{name} does not compile:\n{log.decode(errors='replace')}")
    _, size = nvrtc.nvrtcGetPTXSize(prog)
    ptx = b" " * size
    nvrtc.nvrtcGetPTX(prog, ptx)
    return ptx.decode(errors="replace")


@pytest.mark.parametrize("dtype", ["float", "double"])
@pytest.mark.parametrize("wrapper, body, name", [
    (FORWARD, backend._CELL_FORWARD, "cell_forward"),
    (BACKWARD, backend._CELL_BACKWARD, "cell_backward"),
])
def test_cell_kernel_bodies_compile_to_ptx(dtype, wrapper, body, name):
    source = f"typedef {dtype} T;\n" + wrapper.replace("BODY", body)
    ptx = ptx_of(source, f"{name}.cu")
    assert f".entry {name}(" in ptx
