// 16-byte vector loads and stores for the elementwise CUDA kernels (actnorm.cu, coupling.cu).
//
// A kernel instantiated with W = vec_width<scalar_t>() moves W consecutive elements per
// ld.global.v4 / st.global.v4 (4 floats, 2 doubles, 8 halfs or bfloat16s); the same kernel
// with W = 1 is its scalar path.  The host picks the vector instantiation only after
// vec_aligned() holds for EVERY pointer the kernel reads or writes and the row lengths keep
// every vector inside one row (see each kernel file); otherwise the scalar path runs.
#pragma once

#include <vector_types.h>  // uint4

#include <cstdint>
#include <cstring>

namespace invflow {
namespace cuda {

constexpr int kVecBytes = 16;

// Elements of T in one 16-byte vector.
template <typename T>
constexpr int vec_width() {
  static_assert(kVecBytes % sizeof(T) == 0, "element size must divide 16 bytes");
  return static_cast<int>(kVecBytes / sizeof(T));
}

// W consecutive elements, aligned to their total size: W * sizeof(T) == 16 compiles to one
// 128-bit access, W == 1 to a plain scalar access.
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

// p must be aligned to sizeof(T) * W (the host checked vec_aligned when W > 1).  The 16-byte
// accesses are the uint4 intrinsics __ldg / __stwb, so that each stays one ld.global.nc.v4 /
// st.global.v4: plain aggregate or uint4 assignments were split into 32-bit stores in some
// instantiations (the 64-bit-index ones).  Every input of these kernels is read-only for the
// whole kernel (outputs are fresh tensors), as __ldg requires.
template <int W, typename T>
__device__ __forceinline__ Pack<T, W> load_pack(const T* p) {
  Pack<T, W> out;
  if constexpr (W == 1) {
    out.v[0] = *p;
  } else {
    static_assert(sizeof(Pack<T, W>) == sizeof(uint4), "vector packs are 16 bytes");
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));  // ld.global.nc.v4
    memcpy(&out, &raw, sizeof(raw));
  }
  return out;
}

template <int W, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, W>& v) {
  if constexpr (W == 1) {
    *p = v.v[0];
  } else {
    static_assert(sizeof(Pack<T, W>) == sizeof(uint4), "vector packs are 16 bytes");
    uint4 raw;
    memcpy(&raw, &v, sizeof(raw));
    __stwb(reinterpret_cast<uint4*>(p), raw);  // st.global.wb.v4: a plain uint4 assignment was split
  }
}

// Host: p may be accessed with 16-byte vectors.  A null pointer (an absent mask or gradient)
// counts as aligned: the kernels never dereference it.
inline bool vec_aligned(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % kVecBytes == 0; }

template <typename... Ptrs>
inline bool all_vec_aligned(const Ptrs*... ptrs) {
  return (vec_aligned(ptrs) && ...);
}

}  // namespace cuda
}  // namespace invflow
