// tinyinduct's CPU kernels (float32), built by `tinyinduct.native`:
//
// 1. Causal self-attention, forward and backward, for head sizes 8 and 16.
//
// At these head sizes a score matmul's inner dimension is 8 or 16, too short for a BLAS call to
// pay for its setup, and the flash kernel spends most of its time outside multiply-adds. Here one
// sequence's head at a time (threads share the sequences) is gathered into small zero-padded
// buffers that stay in cache, its causal scores are written by a 4 x 16 register-blocked kernel,
// the softmax uses a vectorised exponential. The forward pass keeps each row's log-sum-exp, and
// the pattern either in `pat` ([B*H, P16, P16], P16 = P rounded up to 16) for the backward pass
// to read, or, where `pat` is empty, nowhere: the backward pass then recomputes it.
// Every tensor is [batch, heads, positions, head size] with any strides but a contiguous last
// dimension, so the projections' row layout is read and written in place.
//
// 2. The softmax and cross-entropy of a chunk of logits in one pass per row: the bias added,
// the maximum, the exponentials and their sum, the gradient softmax - onehot written in place,
// and the row's loss; torch does the same in five passes over the chunk.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32), aligned(4)));
static inline v8 ld(const float* p) { return *(const v8*)p; }
static inline void st(float* p, v8 x) { *(v8*)p = x; }
static inline v8 bc(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline int64_t up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline float hmax(v8 x) {  // the largest of the 8 lanes
  float m = x[0];
  for (int u = 1; u < 8; ++u) m = std::max(m, x[u]);
  return m;
}
static inline float hsum(v8 x) {  // the sum of the 8 lanes
  float s = 0.f;
  for (int u = 0; u < 8; ++u) s += x[u];
  return s;
}

// exp(x) for x <= 0, Cephes' single-precision polynomial (below -87 it gives about 1e-38)
static inline v8 exp8(v8 x) {
  x = x < bc(-87.f) ? bc(-87.f) : x;
  const v8 t = x * bc(1.44269504088896341f) + bc(0.5f);
  v8i n = __builtin_convertvector(t, v8i);
  n += (__builtin_convertvector(n, v8) > t);  // truncation to floor: -1 where it rounded up
  const v8 fn = __builtin_convertvector(n, v8);
  const v8 r = x - fn * bc(0.693359375f) + fn * bc(2.12194440e-4f);
  v8 p = bc(1.9875691500E-4f);
  p = p * r + bc(1.3981999507E-3f);
  p = p * r + bc(8.3334519073E-3f);
  p = p * r + bc(4.1665795894E-2f);
  p = p * r + bc(1.6666665459E-1f);
  p = p * r + bc(5.0000001201E-1f);
  const v8 y = p * r * r + r + bc(1.f);
  return y * (v8)((n + 127) << 23);
}

// out[r, 0:16] = sum_{k<E} A[r*E + k] * BT[k*bts + 0:16] for r < 4
template <int E>
static inline void abt_4x16(const float* A, const float* BT, int64_t bts, float* out, int64_t os) {
  v8 c00 = {}, c01 = {}, c10 = {}, c11 = {}, c20 = {}, c21 = {}, c30 = {}, c31 = {};
  for (int k = 0; k < E; ++k) {
    const v8 b0 = ld(BT + k * bts), b1 = ld(BT + k * bts + 8);
    const v8 a0 = bc(A[k]), a1 = bc(A[E + k]), a2 = bc(A[2 * E + k]), a3 = bc(A[3 * E + k]);
    c00 += a0 * b0; c01 += a0 * b1; c10 += a1 * b0; c11 += a1 * b1;
    c20 += a2 * b0; c21 += a2 * b1; c30 += a3 * b0; c31 += a3 * b1;
  }
  st(out, c00); st(out + 8, c01); st(out + os, c10); st(out + os + 8, c11);
  st(out + 2 * os, c20); st(out + 2 * os + 8, c21); st(out + 3 * os, c30); st(out + 3 * os + 8, c31);
}

// out[r, 0:E] = sum_{k0<=k<k1} C[r*cr + k*ck] * Y[k*E + 0:E] for r < 4
template <int E>
static inline void cy_4(const float* C, int64_t cr, int64_t ck, const float* Y, int64_t k0, int64_t k1, float* out) {
  constexpr int NV = E / 8;
  v8 acc[4][NV] = {};
  for (int64_t k = k0; k < k1; ++k) {
    v8 y[NV];
    for (int u = 0; u < NV; ++u) y[u] = ld(Y + k * E + 8 * u);
    for (int r = 0; r < 4; ++r) {
      const v8 c = bc(C[r * cr + k * ck]);
      for (int u = 0; u < NV; ++u) acc[r][u] += c * y[u];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int u = 0; u < NV; ++u) st(out + r * E + 8 * u, acc[r][u]);
}

// One head of one sequence: its [P, E] rows (row stride rs) gathered into a zero-padded buffer.
struct Rows {
  const float* p; int64_t rs;
};
template <int E>
static inline void gather(Rows x, int64_t P, float mul, float* out, int64_t Pp) {
  for (int64_t j = 0; j < P; ++j)
    for (int c = 0; c < E; ++c) out[j * E + c] = x.p[j * x.rs + c] * mul;
  std::fill(out + P * E, out + Pp * E, 0.f);
}
template <int E>
static inline void gather_t(Rows x, int64_t P, float* out, int64_t Pp) {  // transposed: out[c*Pp + j]
  for (int64_t j = 0; j < P; ++j)
    for (int c = 0; c < E; ++c) out[c * Pp + j] = x.p[j * x.rs + c];
  for (int c = 0; c < E; ++c) std::fill(out + c * Pp + P, out + (c + 1) * Pp, 0.f);
}
template <int E>
static inline void scatter(const float* in, int64_t i0, int64_t i1, float* out, int64_t rs) {
  for (int64_t i = i0; i < i1; ++i) std::copy(in + (i - i0) * E, in + (i - i0 + 1) * E, out + i * rs);
}

// S[i, 0:Pp] <- the causal pattern of rows i0..i0+3 (zero beyond i and beyond P). With lse null
// the softmax is computed and each row's log-sum-exp written to lse_out; with lse given, the
// pattern is exp(scores - lse), as the forward pass computed it.
template <int E>
static inline void pattern_rows(const float* Qs, const float* KT, int64_t i0, int64_t P, int64_t Pp, float* S,
                                const float* lse, float* lse_out) {
  for (int64_t jb = 0; jb < i0 + 4; jb += 16) abt_4x16<E>(Qs + i0 * E, KT + jb, Pp, S + i0 * Pp + jb, Pp);
  for (int64_t i = i0; i < i0 + 4; ++i) {
    float* s = S + i * Pp;
    if (i >= P) { std::fill(s, s + Pp, 0.f); continue; }
    const int64_t len = i + 1, lenp = up(len, 8);
    for (int64_t j = len; j < lenp; ++j) s[j] = -1e30f;
    float m;
    if (lse) m = lse[i];
    else {
      v8 m8 = ld(s);
      for (int64_t j = 8; j < lenp; j += 8) { const v8 x = ld(s + j); m8 = x > m8 ? x : m8; }
      m = hmax(m8);
    }
    v8 sum8 = {};
    for (int64_t j = 0; j < lenp; j += 8) { const v8 e = exp8(ld(s + j) - bc(m)); st(s + j, e); sum8 += e; }
    for (int64_t j = len; j < lenp; ++j) { sum8[j % 8] -= s[j]; s[j] = 0.f; }
    std::fill(s + lenp, s + Pp, 0.f);
    if (lse) continue;
    const float sum = hsum(sum8);
    const v8 inv = bc(1.f / sum);
    for (int64_t j = 0; j < lenp; j += 8) st(s + j, ld(s + j) * inv);
    lse_out[i] = m + std::log(sum);
  }
}

// z <- softmax(q k^T * scale, causal) v, lse [B*H, P] <- each row's log-sum-exp
template <int E>
static void forward_impl(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, float scale,
                         torch::Tensor& z, torch::Tensor& lse, torch::Tensor& pat) {
  const int64_t B = q.size(0), H = q.size(1), P = q.size(2), Pp = up(P, 16);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), qs2 = q.stride(2), ks0 = k.stride(0), ks1 = k.stride(1),
                ks2 = k.stride(2), vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  float *zp = z.data_ptr<float>(), *lp = lse.data_ptr<float>();
  float* patp = pat.numel() ? pat.data_ptr<float>() : nullptr;
  const int64_t zs0 = z.stride(0), zs1 = z.stride(1), zs2 = z.stride(2);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Qs(Pp * E), KT(E * Pp), V(Pp * E), S(Pp * Pp), o(4 * E);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / H, h = n % H;
      gather<E>({qp + b * qs0 + h * qs1, qs2}, P, scale, Qs.data(), Pp);
      gather_t<E>({kp + b * ks0 + h * ks1, ks2}, P, KT.data(), Pp);
      gather<E>({vp + b * vs0 + h * vs1, vs2}, P, 1.f, V.data(), Pp);
      float* Sn = patp ? patp + n * Pp * Pp : S.data();
      for (int64_t i0 = 0; i0 < P; i0 += 4) {
        pattern_rows<E>(Qs.data(), KT.data(), i0, P, Pp, Sn, nullptr, lp + n * P);
        const int64_t i1 = std::min(i0 + 4, P);
        cy_4<E>(Sn + i0 * Pp, Pp, 1, V.data(), 0, i1, o.data());
        scatter<E>(o.data(), i0, i1, zp + b * zs0 + h * zs1, zs2);
      }
    }
  });
}

// dq, dk, dv <- the gradients of q, k, v given grad_z, the gradient of z
template <int E>
static void backward_impl(const torch::Tensor& gz, const torch::Tensor& q, const torch::Tensor& k,
                          const torch::Tensor& v, const torch::Tensor& lse, float scale, torch::Tensor& dq,
                          torch::Tensor& dk, torch::Tensor& dv, const torch::Tensor& pat) {
  const int64_t B = q.size(0), H = q.size(1), P = q.size(2), Pp = up(P, 16);
  const float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>(),
              *gp = gz.data_ptr<float>(), *lp = lse.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), qs2 = q.stride(2), ks0 = k.stride(0), ks1 = k.stride(1),
                ks2 = k.stride(2), vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2), gs0 = gz.stride(0),
                gs1 = gz.stride(1), gs2 = gz.stride(2);
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();
  const float* patp = pat.numel() ? pat.data_ptr<float>() : nullptr;
  const int64_t os0[3] = {dq.stride(0), dk.stride(0), dv.stride(0)}, os1[3] = {dq.stride(1), dk.stride(1), dv.stride(1)},
                os2[3] = {dq.stride(2), dk.stride(2), dv.stride(2)};
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> Qs(Pp * E), Q(Pp * E), KT(E * Pp), K(Pp * E), VT(E * Pp), G(Pp * E), S(Pp * Pp),
        D(Pp * Pp), o(4 * E);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / H, h = n % H;
      const Rows qr{qp + b * qs0 + h * qs1, qs2}, kr{kp + b * ks0 + h * ks1, ks2};
      gather<E>(qr, P, scale, Qs.data(), Pp);
      gather<E>(qr, P, 1.f, Q.data(), Pp);
      gather_t<E>(kr, P, KT.data(), Pp);
      gather<E>(kr, P, 1.f, K.data(), Pp);
      gather_t<E>({vp + b * vs0 + h * vs1, vs2}, P, VT.data(), Pp);
      gather<E>({gp + b * gs0 + h * gs1, gs2}, P, 1.f, G.data(), Pp);
      const float* Sn = patp ? patp + n * Pp * Pp : S.data();
      for (int64_t i0 = 0; i0 < P; i0 += 4) {
        if (!patp) pattern_rows<E>(Qs.data(), KT.data(), i0, P, Pp, S.data(), lp + n * P, nullptr);
        for (int64_t jb = 0; jb < i0 + 4; jb += 16) abt_4x16<E>(G.data() + i0 * E, VT.data() + jb, Pp, D.data() + i0 * Pp + jb, Pp);
        for (int64_t i = i0; i < i0 + 4; ++i) {  // the scores' gradient, scaled as they were
          float* d = D.data() + i * Pp;
          const float* p = Sn + i * Pp;
          if (i >= P) { std::fill(d, d + Pp, 0.f); continue; }
          const int64_t lenp = up(i + 1, 8);
          v8 dot8 = {};
          for (int64_t j = 0; j < lenp; j += 8) dot8 += ld(p + j) * ld(d + j);
          const float dot = hsum(dot8);
          for (int64_t j = 0; j < lenp; j += 8) st(d + j, ld(p + j) * (ld(d + j) - bc(dot)) * bc(scale));
          std::fill(d + lenp, d + Pp, 0.f);
        }
        const int64_t i1 = std::min(i0 + 4, P);
        cy_4<E>(D.data() + i0 * Pp, Pp, 1, K.data(), 0, i1, o.data());
        scatter<E>(o.data(), i0, i1, dqp + b * os0[0] + h * os1[0], os2[0]);
      }
      for (int64_t j0 = 0; j0 < P; j0 += 4) {
        const int64_t j1 = std::min(j0 + 4, P);
        cy_4<E>(D.data() + j0, 1, Pp, Q.data(), j0, P, o.data());
        scatter<E>(o.data(), j0, j1, dkp + b * os0[1] + h * os1[1], os2[1]);
        cy_4<E>(Sn + j0, 1, Pp, G.data(), j0, P, o.data());
        scatter<E>(o.data(), j0, j1, dvp + b * os0[2] + h * os1[2], os2[2]);
      }
    }
  });
}

// logits [G, R, V] <- softmax(logits + bias[g]) - onehot(targets), in place; loss [G, R] <- each
// row's cross-entropy, logsumexp(logits + bias) - (logits + bias)[target]
void softmax_cross_entropy(torch::Tensor logits, torch::Tensor bias, torch::Tensor targets, torch::Tensor loss) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == torch::kFloat32 && logits.is_contiguous() &&
                  logits.dim() == 3, "logits must be a contiguous float32 CPU tensor [G, rows, V]");
  const int64_t G = logits.size(0), R = logits.size(1), V = logits.size(2);
  TORCH_CHECK(bias.scalar_type() == torch::kFloat32 && bias.is_contiguous() && bias.numel() == G * V,
              "bias must be a contiguous float32 [G, V]");
  TORCH_CHECK(targets.scalar_type() == torch::kInt64 && targets.is_contiguous() && targets.numel() == G * R,
              "targets must be a contiguous int64 [G, rows]");
  TORCH_CHECK(loss.scalar_type() == torch::kFloat32 && loss.is_contiguous() && loss.numel() == G * R,
              "loss must be a contiguous float32 [G, rows]");
  float *xp = logits.data_ptr<float>(), *lp = loss.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const int64_t* tp = targets.data_ptr<int64_t>();
  const int64_t V8 = V / 8 * 8;
  at::parallel_for(0, G * R, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float* x = xp + n * V;
      const float* b = bp + (n / R) * V;
      const int64_t t = tp[n];
      TORCH_CHECK(t >= 0 && t < V, "target ", t, " outside the vocabulary of ", V);
      v8 m8 = bc(-3.0e38f);
      for (int64_t j = 0; j < V8; j += 8) {
        const v8 y = ld(x + j) + ld(b + j);
        st(x + j, y);
        m8 = y > m8 ? y : m8;
      }
      float m = hmax(m8);
      for (int64_t j = V8; j < V; ++j) { x[j] += b[j]; m = std::max(m, x[j]); }
      const float picked = x[t];
      v8 s8 = {};
      for (int64_t j = 0; j < V8; j += 8) {
        const v8 e = exp8(ld(x + j) - bc(m));
        st(x + j, e);
        s8 += e;
      }
      float s = hsum(s8);
      for (int64_t j = V8; j < V; ++j) { x[j] = std::exp(x[j] - m); s += x[j]; }
      const float inv = 1.f / s;
      for (int64_t j = 0; j < V8; j += 8) st(x + j, ld(x + j) * bc(inv));
      for (int64_t j = V8; j < V; ++j) x[j] *= inv;
      x[t] -= 1.f;
      lp[n] = m + std::log(s) - picked;
    }
  });
}

static void check(const torch::Tensor& t, const torch::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32, name, " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == 4 && t.sizes() == like.sizes() && t.stride(3) == 1, name,
              " must be [batch, heads, positions, head size] like q, with a contiguous last dimension");
}

// z, lse, pat: outputs ([B, H, P, E], [B*H, P], and [B*H, P16, P16] or empty), written in place
void attention_forward(torch::Tensor q, torch::Tensor k, torch::Tensor v, double scale, torch::Tensor z,
                       torch::Tensor lse, torch::Tensor pat) {
  check(q, q, "q"); check(k, q, "k"); check(v, q, "v"); check(z, q, "z");
  TORCH_CHECK(lse.is_contiguous() && lse.numel() == q.size(0) * q.size(1) * q.size(2), "lse must be [B*H, P]");
  const int64_t E = q.size(3);
  if (E == 16) forward_impl<16>(q, k, v, (float)scale, z, lse, pat);
  else if (E == 8) forward_impl<8>(q, k, v, (float)scale, z, lse, pat);
  else TORCH_CHECK(false, "head size must be 8 or 16, not ", E);
}

// dq, dk, dv: outputs like q, written in place; pat: the forward pass's, or empty
void attention_backward(torch::Tensor grad_z, torch::Tensor q, torch::Tensor k, torch::Tensor v,
                        torch::Tensor lse, double scale, torch::Tensor dq, torch::Tensor dk, torch::Tensor dv,
                        torch::Tensor pat) {
  check(grad_z, q, "grad_z"); check(k, q, "k"); check(v, q, "v");
  check(dq, q, "dq"); check(dk, q, "dk"); check(dv, q, "dv");
  const int64_t E = q.size(3);
  if (E == 16) backward_impl<16>(grad_z, q, k, v, lse, (float)scale, dq, dk, dv, pat);
  else if (E == 8) backward_impl<8>(grad_z, q, k, v, lse, (float)scale, dq, dk, dv, pat);
  else TORCH_CHECK(false, "head size must be 8 or 16, not ", E);
}
