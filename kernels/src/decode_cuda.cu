// CUDA decode_trajectory: one thread per output point, all in ONE block.
//
// Why one block: the result (mode, verdict, first offending index per flag) must start from a known
// state before threads combine into it. Inside one block that is shared memory set up by thread 0
// and a __syncthreads(), so a call is a single launch with no memset, no second kernel and no
// host synchronisation. Publish grids are tens to a few hundred points; beyond kDecodeMaxThreads
// the threads loop over the remaining points.
//
// The arithmetic is decode.h's, shared with the CPU twin. integrate_controls (one thread per mode)
// lives here too: its output is this kernel's input.
#include <cuda_runtime.h>

#include <climits>

#include "decode.h"

namespace vla {

namespace {

__global__ void decode_kernel(DecodeParams p, DecodeResult* result) {
  __shared__ int s_mode;
  __shared__ float s_score;
  __shared__ int s_bad_score;
  __shared__ int s_bad_waypoint;
  __shared__ unsigned int s_verdict;
  __shared__ int s_first[kDecodeFlags];

  // K is small (<= 64 in practice): one thread scans the scores.
  if (threadIdx.x == 0) {
    const ModeChoice c = choose_mode(p.score, p.K);
    s_mode = c.mode;
    s_score = c.score;
    s_bad_score = c.bad_score;
    s_bad_waypoint = INT_MAX;
    s_verdict = c.bad_score >= 0 ? kDecodeNonFinite : 0u;
    for (int b = 0; b < kDecodeFlags; ++b) s_first[b] = INT_MAX;
  }
  __syncthreads();

  const ModeView m = mode_view(p, s_mode);
  const int tid = static_cast<int>(threadIdx.x);
  const int nthreads = static_cast<int>(blockDim.x);

  // Every value of the chosen mode must be finite, including waypoints no output point reaches.
  const int bad = first_nonfinite_waypoint(m, tid, p.T * p.F, nthreads);
  if (bad >= 0) {
    atomicMin(&s_bad_waypoint, bad);
    atomicOr(&s_verdict, kDecodeNonFinite);
  }

  for (int i = tid; i < p.M; i += nthreads) {
    const uint32_t f = decode_point(p, m, i);
    if (f) {
      atomicOr(&s_verdict, f);
      for (int b = 0; b < kDecodeFlags; ++b) {
        if (f >> b & 1u) atomicMin(&s_first[b], i);
      }
    }
  }
  __syncthreads();  // rows written by other threads of the block are visible after this

  if (threadIdx.x == 0) {
    DecodeResult r;
    r.mode = s_mode;
    r.score = s_score;
    r.verdict = s_verdict;
    r.bad_score = s_bad_score;
    r.bad_waypoint = s_bad_waypoint == INT_MAX ? -1 : s_bad_waypoint;
    for (int b = 0; b < kDecodeFlags; ++b) r.first[b] = s_first[b] == INT_MAX ? -1 : s_first[b];
    finish_result(p, &r);
    *result = r;
  }
}

// integrate_controls: one thread per mode, each running its T steps in sequence (K is a handful of
// modes and T = 64, so there is nothing to gain from splitting the chain).
__global__ void integrate_kernel(IntegrateParams p) {
  const int k = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (k < p.K) integrate_mode(p, k);
}

}  // namespace

int integrate_cuda_launch(const IntegrateParams& p, uintptr_t stream) {
  int threads = (p.K + 31) / 32 * 32;
  if (threads > kDecodeMaxThreads) threads = kDecodeMaxThreads;
  const int blocks = (p.K + threads - 1) / threads;
  integrate_kernel<<<blocks, threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p);
  return static_cast<int>(cudaGetLastError());
}

int decode_cuda_launch(const DecodeParams& p, DecodeResult* result, uintptr_t stream) {
  int threads = (p.M + 31) / 32 * 32;
  if (threads < 32) threads = 32;
  if (threads > kDecodeMaxThreads) threads = kDecodeMaxThreads;
  decode_kernel<<<1, threads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p, result);
  return static_cast<int>(cudaGetLastError());
}

const char* decode_cuda_error_text(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace vla
