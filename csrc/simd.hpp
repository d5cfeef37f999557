// Portable SIMD through GCC/Clang vector extensions; hot loops are compiled once per x86 ISA level
// and picked at load time (target_clones), so one build is fast on AVX-512, AVX2 and plain SSE2.
#pragma once

#include <cstdint>
#include <cstring>

namespace baf::simd {

constexpr int kLanes = 16;
using vf = float __attribute__((vector_size(kLanes * sizeof(float))));
using vi = std::int32_t __attribute__((vector_size(kLanes * sizeof(std::int32_t))));
template <class T>
struct VecOf;  // vector_size cannot take a dependent type, so one specialization per element type
template <>
struct VecOf<std::uint8_t> {
  using type = std::uint8_t __attribute__((vector_size(kLanes)));
};
template <>
struct VecOf<std::uint16_t> {
  using type = std::uint16_t __attribute__((vector_size(kLanes * 2)));
};
template <class T>
using vec = typename VecOf<T>::type;

template <class V, class T>
inline __attribute__((always_inline)) V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <class V, class T>
inline __attribute__((always_inline)) void store(T* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

inline __attribute__((always_inline)) vf splat(float x) { return vf{} + x; }

// All-ones lanes where the float is NaN or infinite (exponent bits all set).
inline __attribute__((always_inline)) vi non_finite(vf v) {
  vi bits;
  std::memcpy(&bits, &v, sizeof(vi));
  return (bits & 0x7f800000) == 0x7f800000;
}

}  // namespace baf::simd

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(BAF_NO_CLONES)
#define BAF_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BAF_SIMD_CLONES
#endif
