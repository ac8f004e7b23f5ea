// The one way epserve launches a kernel: EP_LAUNCH(kernel, grid, block,
// smem, stream, args...) is kernel<<<grid, block, smem, stream>>>(args...)
// under nvcc. In the emulated build (EP_CUDA_EMU, tests only) it runs the
// grid on the host through tests/emu/runtime.c, block by block with each
// block's threads as real threads, and passes the kernel's name so that a
// fault (a guard zone overwritten, a bad address) names it. Either way a bad
// launch shows in cudaGetLastError().
#ifndef EP_CUDA_LAUNCH_H
#define EP_CUDA_LAUNCH_H

#ifdef EP_CUDA_EMU
#define EP_LAUNCH(kernel, grid, block, smem, stream, ...)                                          \
    emu_launch(#kernel, kernel, grid, block, smem, stream, __VA_ARGS__)
#else
#define EP_LAUNCH(kernel, grid, block, smem, stream, ...)                                          \
    kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

#endif
