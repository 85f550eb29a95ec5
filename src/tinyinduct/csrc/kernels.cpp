// tinyinduct's CPU kernels (float32), built by `tinyinduct.native`:
//
// 1. Causal self-attention, forward and backward, for head sizes 8 and 16.
//
// At these head sizes a score matmul's inner dimension is 8 or 16, too short for a BLAS call to
// pay for its setup, and the flash kernel spends most of its time outside multiply-adds. Here one
// sequence's head at a time (threads share the sequences) is gathered into small zero-padded
// buffers that stay in cache. A vector holds W queries (16 with AVX-512, else 8), one per lane,
// so a block of W queries takes its scores, maximum, exponentials, sum and log-sum-exp lane by
// lane with no reduction across lanes, and every multiply-add broadcasts one number of a key,
// value or gradient against W queries. The forward pass keeps each query's log-sum-exp, and the
// pattern, transposed, either in `pat` ([B*H, P16, P16], P16 = P rounded up to 16) for the
// backward pass to read, or, where `pat` is empty, nowhere: the backward pass then recomputes it.
// The backward pass takes dq block by block, then dk and dv eight keys at a time from the
// transposed pattern and score gradients.
// Every tensor is [batch, heads, positions, head size] with any strides but a contiguous last
// dimension, so the projections' row layout is read and written in place.
//
// 2. The softmax and cross-entropy of a chunk of logits in one pass per row: the bias added,
// the maximum, the exponentials and their sum, the gradient softmax - onehot written in place
// (its subnormal terms as 0), and the row's loss; torch does the same in five passes over the
// chunk.
//
// 3. One attention layer, forward and backward, each in one call: the projections' matmuls into
// one workspace of rows, kernel 1 reading its q, k and v there in place, and the output
// projection, with the residual added inside its matmul. The same operations as torch's
// functions in `head_projections` and `native_attention`, in the same order (tested equal bit
// for bit); one call in place of the forty-odd Python calls and three autograd nodes between them.
//
// 4. The optimizer's step: per-model gradient clipping and AdamW by torch's own kernels, in one
// call in place of their Python.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <vector>

// A vector of W floats: 16 with AVX-512, else 8
#if defined(__AVX512F__)
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
typedef float vw __attribute__((vector_size(4 * W), aligned(4)));
static inline vw ldw(const float* p) { return *(const vw*)p; }
static inline void stw(float* p, vw x) { *(vw*)p = x; }
static inline vw bcw(float x) { return vw{} + x; }
static inline int64_t up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static inline float hmax(vw x) {  // the largest of the W lanes
  float m = x[0];
  for (int u = 1; u < W; ++u) m = std::max(m, x[u]);
  return m;
}
static inline float hsum(vw x) {  // the sum of the W lanes
  float s = 0.f;
  for (int u = 0; u < W; ++u) s += x[u];
  return s;
}

// exp(x) for x <= 0, Cephes' single-precision polynomial; exactly 0 below -87, where a float
// would soon be denormal
static inline vw vexp(vw x) {
  typedef decltype(x < x) vi;
  const vw c = x < vw{} - 87.f ? vw{} - 87.f : x;
  const vw t = c * 1.44269504088896341f + 0.5f;
  vi n = __builtin_convertvector(t, vi);
  n += (__builtin_convertvector(n, vw) > t);  // truncation to floor: -1 where it rounded up
  const vw fn = __builtin_convertvector(n, vw);
  const vw r = c - fn * 0.693359375f + fn * 2.12194440e-4f;
  vw p = vw{} + 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  const vw y = (p * r * r + r + 1.f) * (vw)((n + 127) << 23);
  return x < vw{} - 87.f ? vw{} : y;
}

// Attention's vectors hold W queries, one per lane: a block of W queries takes its scores,
// maximum, exponentials, sums and log-sum-exps lane by lane, with no reduction across lanes, and
// each multiply-add broadcasts one number of a key (or value, or gradient) against a vector of
// W queries.
static inline vw lanes() {
  vw l;
  for (int u = 0; u < W; ++u) l[u] = (float)u;
  return l;
}
static const float MASKED = -3.0e38f;  // a removed score: its exponential is exactly 0

// log(x) for normal x > 0, Cephes' single-precision polynomial
static inline vw logw(vw x) {
  typedef decltype(x < x) vi;
  const vi bits = (vi)x;
  vi e = ((bits >> 23) & 0xff) - 126;
  vw m = (vw)((bits & 0x007fffff) | 0x3f000000);  // x = m * 2^e, m in [0.5, 1)
  const vi low = m < 0.707106781186547524f;  // -1 where m < sqrt(1/2): then 2m - 1 instead
  e += low;
  m = m + (low ? m : vw{}) - 1.f;
  const vw z = m * m, fe = __builtin_convertvector(e, vw);
  vw y = bcw(7.0376836292E-2f);
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * z * m + fe * -2.12194440e-4f - 0.5f * z;
  return m + y + fe * 0.693359375f;
}

// One head of one sequence: its [P, E] rows (row stride rs), times mul, in a buffer of Pp rows
// zero-padded beyond P, as rows (out[j*E + c]) or transposed (out[c*Pp + j]).
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
static inline void gather_t(Rows x, int64_t P, float mul, float* out, int64_t Pp) {
  for (int64_t j = 0; j < P; ++j)
    for (int c = 0; c < E; ++c) out[c * Pp + j] = x.p[j * x.rs + c] * mul;
  for (int c = 0; c < E; ++c) std::fill(out + c * Pp + P, out + (c + 1) * Pp, 0.f);
}
// rows i0 .. min(i0 + W, P) of out (row stride rs) <- acc[c][i - i0]
template <int E>
static inline void scatter_t(const vw* acc, int64_t i0, int64_t P, float* out, int64_t rs) {
  float buf[E * W];
  for (int c = 0; c < E; ++c) stw(buf + c * W, acc[c]);
  for (int64_t i = i0; i < std::min(i0 + W, P); ++i)
    for (int c = 0; c < E; ++c) out[i * rs + c] = buf[c * W + (i - i0)];
}
// rows i0 .. i1 of out (row stride rs) <- in's rows
template <int E>
static inline void scatter(const float* in, int64_t i0, int64_t i1, float* out, int64_t rs) {
  for (int64_t i = i0; i < i1; ++i) std::copy(in + (i - i0) * E, in + (i - i0 + 1) * E, out + i * rs);
}

// out[u] <- sum_c X[(j + u)*E + c] * cols[c] for u < 4: four keys side by side, four chains of
// multiply-adds
template <int E>
static inline void dots4(const float* X, int64_t j, const vw* cols, vw* out) {
  vw a0 = {}, a1 = {}, a2 = {}, a3 = {};
  const float* x = X + j * E;
  for (int c = 0; c < E; ++c) {
    a0 += x[c] * cols[c]; a1 += x[E + c] * cols[c];
    a2 += x[2 * E + c] * cols[c]; a3 += x[3 * E + c] * cols[c];
  }
  out[0] = a0; out[1] = a1; out[2] = a2; out[3] = a3;
}
// acc[c] += sum_{j<n} T[j*ts + 0:W] * X[j*E + c]: the W queries' rows of T @ X
template <int E>
static inline void accumulate(const float* T, int64_t ts, const float* X, int64_t n, vw* acc) {
  for (int64_t j = 0; j < n; ++j) {
    const vw t = ldw(T + j * ts);
    for (int c = 0; c < E; ++c) acc[c] += t * X[j * E + c];
  }
}
// out[r, 0:E] = sum_{k0<=k<k1} C[r*cr + k] * Y[k*E + 0:E] for r < 8: eight keys' rows of C @ Y,
// each row one vector of E numbers
template <int E>
static inline void rows_8(const float* C, int64_t cr, const float* Y, int64_t k0, int64_t k1, float* out) {
  typedef float ve __attribute__((vector_size(4 * E), aligned(4)));
  ve acc[8] = {};
  for (int64_t k = k0; k < k1; ++k) {
    const ve y = *(const ve*)(Y + k * E);
    for (int r = 0; r < 8; ++r) acc[r] += C[r * cr + k] * y;
  }
  for (int r = 0; r < 8; ++r) *(ve*)(out + r * E) = acc[r];
}

// The pattern of the W queries i0 + lane, transposed: T[j*ts + lane] for keys j < i0 + W (0
// where the key is after the query or beyond P). QT: the queries times scale, transposed; K: the
// keys' rows. With lse null the softmax is computed and the queries' log-sum-exps written to
// lse_out[0:W]; with lse given (lse[0:W]), the pattern is exp(scores - lse), as the forward pass
// computed it.
template <int E>
static inline void pattern_block(const float* QT, const float* K, int64_t i0, int64_t P, int64_t Pp,
                                 float* T, int64_t ts, const float* lse, float* lse_out) {
  vw q[E], s[4];
  for (int c = 0; c < E; ++c) q[c] = ldw(QT + c * Pp + i0);
  const vw lane = lanes();
  const int64_t nk = i0 + W;
  vw m = lse ? ldw(lse) : bcw(MASKED);
  for (int64_t j = 0; j < nk; j += 4) {
    dots4<E>(K, j, q, s);
    for (int u = 0; u < 4; ++u) {
      const int64_t key = j + u;
      if (key >= P) s[u] = bcw(MASKED);
      else if (key > i0) s[u] = bcw((float)(key - i0)) > lane ? bcw(MASKED) : s[u];
      stw(T + key * ts, s[u]);
      if (!lse) m = s[u] > m ? s[u] : m;
    }
  }
  vw sum = {};
  for (int64_t j = 0; j < nk; ++j) {
    const vw e = vexp(ldw(T + j * ts) - m);
    stw(T + j * ts, e);
    sum += e;
  }
  if (lse) return;
  const vw inv = 1.f / sum;
  for (int64_t j = 0; j < nk; ++j) stw(T + j * ts, ldw(T + j * ts) * inv);
  stw(lse_out, m + logw(sum));
}

// z <- softmax(q k^T * scale, causal) v, lse [B*H, P] <- each row's log-sum-exp, and where pat
// is not empty the pattern, transposed: pat[n, key, query] ([B*H, Pp, Pp], Pp = P rounded up to
// 16; written for the keys up to the end of each query's block of W)
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
    std::vector<float> QT(E * Pp), K(Pp * E), V(Pp * E), T(patp ? 0 : Pp * W), L(W);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / H, h = n % H;
      gather_t<E>({qp + b * qs0 + h * qs1, qs2}, P, scale, QT.data(), Pp);
      gather<E>({kp + b * ks0 + h * ks1, ks2}, P, 1.f, K.data(), Pp);
      gather<E>({vp + b * vs0 + h * vs1, vs2}, P, 1.f, V.data(), Pp);
      for (int64_t i0 = 0; i0 < P; i0 += W) {
        float* Tb = patp ? patp + n * Pp * Pp + i0 : T.data();
        const int64_t ts = patp ? Pp : W;
        pattern_block<E>(QT.data(), K.data(), i0, P, Pp, Tb, ts, nullptr, L.data());
        vw acc[E] = {};
        accumulate<E>(Tb, ts, V.data(), i0 + W, acc);
        scatter_t<E>(acc, i0, P, zp + b * zs0 + h * zs1, zs2);
        for (int64_t i = i0; i < std::min(i0 + W, P); ++i) lp[n * P + i] = L[i - i0];
      }
    }
  });
}

// dq, dk, dv <- the gradients of q, k, v given grad_z, the gradient of z: for each block of W
// queries the pattern (kept, or recomputed from lse), the gradient of its scores and dq; then
// dk and dv from the transposed pattern and score gradients, eight keys at a time.
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
    std::vector<float> QT(patp ? 0 : E * Pp), Q(Pp * E), K(Pp * E), V(Pp * E), GT(E * Pp), G(Pp * E),
        PT(patp ? 0 : Pp * Pp), DS(Pp * Pp), dP(Pp * W), L(Pp), o(8 * E);
    for (int64_t n = begin; n < end; ++n) {
      const int64_t b = n / H, h = n % H;
      const Rows qr{qp + b * qs0 + h * qs1, qs2}, gr{gp + b * gs0 + h * gs1, gs2};
      gather<E>(qr, P, 1.f, Q.data(), Pp);
      gather<E>({kp + b * ks0 + h * ks1, ks2}, P, 1.f, K.data(), Pp);
      gather<E>({vp + b * vs0 + h * vs1, vs2}, P, 1.f, V.data(), Pp);
      gather_t<E>(gr, P, 1.f, GT.data(), Pp);
      gather<E>(gr, P, 1.f, G.data(), Pp);
      if (!patp) {
        gather_t<E>(qr, P, scale, QT.data(), Pp);
        std::copy(lp + n * P, lp + (n + 1) * P, L.begin());
        std::fill(L.begin() + P, L.end(), 0.f);
      }
      const float* Pn = patp ? patp + n * Pp * Pp : PT.data();
      for (int64_t i0 = 0; i0 < P; i0 += W) {
        const int64_t nk = i0 + W;
        if (!patp) pattern_block<E>(QT.data(), K.data(), i0, P, Pp, PT.data() + i0, Pp, L.data() + i0, nullptr);
        vw g[E], d4[4], D = {};
        for (int c = 0; c < E; ++c) g[c] = ldw(GT.data() + c * Pp + i0);
        for (int64_t j = 0; j < nk; j += 4) {  // the pattern's gradient, and its rows' dot with the pattern
          dots4<E>(V.data(), j, g, d4);
          for (int u = 0; u < 4; ++u) {
            stw(dP.data() + (j + u) * W, d4[u]);
            D += ldw(Pn + (j + u) * Pp + i0) * d4[u];
          }
        }
        for (int64_t j = 0; j < nk; ++j)  // the scores' gradient, scaled as they were
          stw(DS.data() + j * Pp + i0, ldw(Pn + j * Pp + i0) * (ldw(dP.data() + j * W) - D) * scale);
        vw acc[E] = {};
        accumulate<E>(DS.data() + i0, Pp, K.data(), nk, acc);
        scatter_t<E>(acc, i0, P, dqp + b * os0[0] + h * os1[0], os2[0]);
      }
      for (int64_t j0 = 0; j0 < P; j0 += 8) {
        const int64_t j1 = std::min(j0 + 8, P);
        rows_8<E>(DS.data() + j0 * Pp, Pp, Q.data(), j0, P, o.data());
        scatter<E>(o.data(), j0, j1, dkp + b * os0[1] + h * os1[1], os2[1]);
        rows_8<E>(Pn + j0 * Pp, Pp, G.data(), j0, P, o.data());
        scatter<E>(o.data(), j0, j1, dvp + b * os0[2] + h * os1[2], os2[2]);
      }
    }
  });
}

// logits [G, R, V] <- (softmax(logits + bias[g]) - onehot(targets)) * weights, in place (the
// gradient of the weighted sum of the rows' losses); loss [G, R] <- each row's cross-entropy,
// logsumexp(logits + bias) - (logits + bias)[target], unweighted
void softmax_cross_entropy(torch::Tensor logits, torch::Tensor bias, torch::Tensor targets, torch::Tensor weights,
                           torch::Tensor loss) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == torch::kFloat32 && logits.is_contiguous() &&
                  logits.dim() == 3, "logits must be a contiguous float32 CPU tensor [G, rows, V]");
  const int64_t G = logits.size(0), R = logits.size(1), V = logits.size(2);
  TORCH_CHECK(bias.scalar_type() == torch::kFloat32 && bias.is_contiguous() && bias.numel() == G * V,
              "bias must be a contiguous float32 [G, V]");
  TORCH_CHECK(targets.scalar_type() == torch::kInt64 && targets.is_contiguous() && targets.numel() == G * R,
              "targets must be a contiguous int64 [G, rows]");
  TORCH_CHECK(loss.scalar_type() == torch::kFloat32 && loss.is_contiguous() && loss.numel() == G * R,
              "loss must be a contiguous float32 [G, rows]");
  TORCH_CHECK(weights.scalar_type() == torch::kFloat32 && weights.is_contiguous() && weights.numel() == G * R,
              "weights must be a contiguous float32 [G, rows]");
  float *xp = logits.data_ptr<float>(), *lp = loss.data_ptr<float>();
  const float *bp = bias.data_ptr<float>(), *wp = weights.data_ptr<float>();
  const int64_t* tp = targets.data_ptr<int64_t>();
  const int64_t VW = V / W * W;
  at::parallel_for(0, G * R, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      float* x = xp + n * V;
      const float* b = bp + (n / R) * V;
      const int64_t t = tp[n];
      TORCH_CHECK(t >= 0 && t < V, "target ", t, " outside the vocabulary of ", V);
      vw mw = bcw(-3.0e38f);
      for (int64_t j = 0; j < VW; j += W) {
        const vw y = ldw(x + j) + ldw(b + j);
        stw(x + j, y);
        mw = y > mw ? y : mw;
      }
      float m = hmax(mw);
      for (int64_t j = VW; j < V; ++j) { x[j] += b[j]; m = std::max(m, x[j]); }
      const float picked = x[t];
      vw sw = {};
      for (int64_t j = 0; j < VW; j += W) {
        const vw e = vexp(ldw(x + j) - m);
        stw(x + j, e);
        sw += e;
      }
      float s = hsum(sw);
      for (int64_t j = VW; j < V; ++j) { x[j] = std::exp(x[j] - m); s += x[j]; }
      const float w = wp[n], scale = w / s;
      // a weighted probability below the smallest normal float (1.2e-38) becomes 0: subnormal
      // operands slow the two gradient matmuls that read the chunk (measured: three times over
      // once a trained model's logits spread), for terms that change no sum above 1e-38
      const vw tiny = bcw(FLT_MIN);
      for (int64_t j = 0; j < VW; j += W) {
        const vw y = ldw(x + j) * scale;
        stw(x + j, y < tiny ? vw{} : y);
      }
      for (int64_t j = VW; j < V; ++j) x[j] = x[j] * scale < FLT_MIN ? 0.f : x[j] * scale;
      x[t] -= w;
      lp[n] = m + std::log(s) - picked;
    }
  });
}

// The fused loss's forward pass (`fused_loss`) over chunks of chunk_rows rows, in one call: each
// chunk's logits into `logits` (a buffer of at least G * chunk_rows * V floats), the kernel above,
// each model's mean loss, and with_grad the chunk's gradient matmuls, grad_resid [G, N, d]
// written. targets [G, N], `ignore` where a row has no target. Returns the loss [G] and, with_grad,
// the gradients of W_U and b_U; the same operations in the same order as the Python loop it
// replaces (tested against torch's cross-entropy).
std::vector<torch::Tensor> unembed_cross_entropy(torch::Tensor resid, torch::Tensor W_U, torch::Tensor b_U,
                                                 torch::Tensor targets, int64_t ignore, int64_t chunk_rows,
                                                 bool with_grad, torch::Tensor logits, torch::Tensor grad_resid) {
  at::NoGradGuard no_grad;
  const int64_t G = W_U.size(0), V = W_U.size(2), N = targets.size(1);
  auto keep = targets != ignore;
  auto safe = targets.clamp_min(0);
  auto weight = (keep / keep.sum(1, true).clamp_min(1)).to(resid.scalar_type());  // 1 / rows, 0 if none
  auto loss = torch::zeros({G}, resid.options());
  torch::Tensor grad_W, grad_b;
  if (with_grad) {
    grad_W = torch::zeros_like(W_U);
    grad_b = torch::zeros_like(b_U);
  }
  auto bias = b_U.contiguous();
  for (int64_t c0 = 0; c0 < N; c0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, N - c0);
    auto g = logits.narrow(0, 0, G * rows * V).view({G, rows, V});
    auto x = resid.narrow(1, c0, rows);
    at::bmm_out(g, x, W_U);
    auto w = weight.narrow(1, c0, rows).contiguous();
    auto row_loss = torch::empty({G, rows}, g.options());
    {
      RECORD_USER_SCOPE("tinyinduct::softmax_cross_entropy");
      softmax_cross_entropy(g, bias, safe.narrow(1, c0, rows).contiguous(), w, row_loss);
    }
    loss += (row_loss * w).sum(1);
    if (!with_grad) continue;
    auto gr = grad_resid.narrow(1, c0, rows);
    if (gr.is_contiguous()) at::bmm_out(gr, g, W_U.transpose(1, 2));
    else gr.copy_(at::bmm(g, W_U.transpose(1, 2)));
    grad_W.baddbmm_(x.transpose(1, 2), g);
    grad_b += g.sum(1);
  }
  if (!with_grad) return {loss};
  return {loss, grad_W, grad_b};
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

// ---- 3. One attention layer ----
// G models, M = batch * pos rows of d_model, h heads of size e; the layer's distinct inputs xs
// [G, M, d] and of_input[i], the input projection i (Q, K, V) reads. A workspace of
// `attention_layer_workspace` floats holds everything the backward pass reads: the pattern
// (where kept; first, so that it is aligned), each input's rows [G, M, n * h * e] (its n
// projections' heads side by side), z [G, M, h * e] and the log-sum-exps.
namespace {
int64_t pad16(int64_t n) { return up(n, 16); }

struct LayerViews {
  std::vector<torch::Tensor> rows;  // per input
  torch::Tensor qkv[3];             // [G * batch, h, pos, e] views of the rows
  torch::Tensor z, lse, pat;
};

// the n projections of each input, side by side in its rows, as [G * batch, h, pos, e] views
void slots(const std::vector<torch::Tensor>& rows, const std::vector<int64_t>& of_input, int64_t N, int64_t pos,
           int64_t h, int64_t e, torch::Tensor* out) {
  for (size_t j = 0; j < rows.size(); ++j) {
    const int64_t n = rows[j].size(2) / (h * e);
    int64_t slot = 0;
    for (int i = 0; i < 3; ++i)
      if (of_input[i] == (int64_t)j) out[i] = rows[j].view({N, pos, n, h, e}).select(2, slot++).transpose(1, 2);
  }
}

int64_t projections_of(const std::vector<int64_t>& of_input, int64_t j) {
  return (of_input[0] == j) + (of_input[1] == j) + (of_input[2] == j);
}

LayerViews carve(const torch::Tensor& ws, const std::vector<int64_t>& of_input, int64_t n_inputs, int64_t G,
                 int64_t M, int64_t batch, int64_t h, int64_t e, bool keep_pattern) {
  LayerViews v;
  const int64_t pos = M / batch, N = G * batch, Pp = pad16(pos);
  int64_t off = 0;
  auto take = [&](int64_t n) {
    TORCH_CHECK(off + n <= ws.numel(), "attention layer: workspace too small");
    auto t = ws.narrow(0, off, n);
    off += pad16(n);
    return t;
  };
  v.pat = keep_pattern ? take(N * h * Pp * Pp).view({N * h, Pp, Pp}) : ws.narrow(0, 0, 0);
  for (int64_t j = 0; j < n_inputs; ++j)
    v.rows.push_back(take(G * M * projections_of(of_input, j) * h * e).view({G, M, -1}));
  slots(v.rows, of_input, N, pos, h, e, v.qkv);
  v.z = take(G * M * h * e).view({G, M, h * e});
  v.lse = take(N * h * pos).view({N * h, pos});
  return v;
}
}  // namespace

int64_t attention_layer_workspace(int64_t n_inputs, int64_t G, int64_t M, int64_t batch, int64_t h, int64_t e,
                                  bool keep_pattern) {
  const int64_t pos = M / batch, N = G * batch, Pp = pad16(pos);
  return (keep_pattern ? pad16(N * h * Pp * Pp) : 0) + 4 * G * M * h * e + 16 * (n_inputs + 1) +
         pad16(N * h * pos);
}

// Ws: W_Q, W_K, W_V [G, h, d, e], W_O [G, h, e, d]; bs: b_Q, b_K, b_V [G, h, e], b_O [G, d], or
// none; residual [G, M, d] or empty; out [G, M, d], written. Returns each input's projection
// weights side by side, [G, d, n * h * e] (for the backward pass).
std::vector<torch::Tensor> attention_layer_forward(std::vector<torch::Tensor> xs, std::vector<int64_t> of_input,
                                                   std::vector<torch::Tensor> Ws, std::vector<torch::Tensor> bs,
                                                   torch::Tensor residual, double scale, int64_t batch,
                                                   bool keep_pattern, torch::Tensor ws, torch::Tensor out) {
  const int64_t G = Ws[0].size(0), h = Ws[0].size(1), d = Ws[0].size(2), e = Ws[0].size(3), M = xs[0].size(1);
  const int64_t n_inputs = xs.size();
  TORCH_CHECK(of_input.size() == 3 && Ws.size() == 4 && (bs.empty() || bs.size() == 4) && M % batch == 0,
              "attention layer: bad arguments");
  LayerViews v = carve(ws, of_input, n_inputs, G, M, batch, h, e, keep_pattern);
  std::vector<torch::Tensor> flats;
  {
    RECORD_USER_SCOPE("projections");
    for (int64_t j = 0; j < n_inputs; ++j) {
      std::vector<torch::Tensor> W, b;
      for (int i = 0; i < 3; ++i)
        if (of_input[i] == j) {
          W.push_back(Ws[i].transpose(1, 2));  // [G, d, h, e]
          if (!bs.empty()) b.push_back(bs[i]);
        }
      auto flat = at::cat(W, 2).view({G, d, -1});
      if (bs.empty()) at::bmm_out(v.rows[j], xs[j], flat);
      else at::baddbmm_out(v.rows[j], at::cat(b, 1).view({G, 1, -1}), xs[j], flat);
      flats.push_back(flat);
    }
  }
  {
    RECORD_USER_SCOPE("attention");
    {
      RECORD_USER_SCOPE("tinyinduct::causal_attention");
      attention_forward(v.qkv[0], v.qkv[1], v.qkv[2], scale,
                        v.z.view({G * batch, M / batch, h, e}).transpose(1, 2), v.lse, v.pat);
    }
  }
  RECORD_USER_SCOPE("projections");
  auto W_O = Ws[3].reshape({G, h * e, d});
  if (residual.numel()) at::baddbmm_out(out, residual, v.z, W_O);
  else at::bmm_out(out, v.z, W_O);
  if (!bs.empty()) out.add_(bs[3].unsqueeze(1));
  return flats;
}

// The backward pass given grad_out [G, M, d]: gws, a workspace of 4 * G * M * h * e floats;
// grad_xs [n_inputs, G, M, d], written. Returns the gradients of W_Q, W_K, W_V, W_O and, with
// biases, of b_Q, b_K, b_V, b_O.
std::vector<torch::Tensor> attention_layer_backward(torch::Tensor grad_out, std::vector<torch::Tensor> xs,
                                                    std::vector<int64_t> of_input, std::vector<torch::Tensor> flats,
                                                    torch::Tensor W_O, bool has_bias, double scale, int64_t batch,
                                                    bool keep_pattern, torch::Tensor ws, torch::Tensor gws,
                                                    torch::Tensor grad_xs) {
  const int64_t G = W_O.size(0), h = W_O.size(1), e = W_O.size(2), d = W_O.size(3), M = xs[0].size(1);
  const int64_t n_inputs = xs.size(), N = G * batch, pos = M / batch;
  TORCH_CHECK(gws.numel() >= 4 * G * M * h * e, "attention layer: gradient workspace too small");
  LayerViews v = carve(ws, of_input, n_inputs, G, M, batch, h, e, keep_pattern);
  std::vector<torch::Tensor> grads(has_bias ? 8 : 4), grad_rows;
  torch::Tensor grad_z = gws.narrow(0, 0, G * M * h * e).view({G, M, h * e}), dqkv[3];
  {
    RECORD_USER_SCOPE("projections");
    at::bmm_out(grad_z, grad_out, W_O.reshape({G, h * e, d}).transpose(1, 2));
    grads[3] = at::bmm(v.z.transpose(1, 2), grad_out).view({G, h, e, d});
    if (has_bias) grads[7] = grad_out.sum(1);
  }
  int64_t off = G * M * h * e;
  for (int64_t j = 0; j < n_inputs; ++j) {
    const int64_t n = G * M * projections_of(of_input, j) * h * e;
    grad_rows.push_back(gws.narrow(0, off, n).view({G, M, -1}));
    off += n;
  }
  slots(grad_rows, of_input, N, pos, h, e, dqkv);
  {
    RECORD_USER_SCOPE("attention");
    {
      RECORD_USER_SCOPE("tinyinduct::causal_attention_backward");
      attention_backward(grad_z.view({N, pos, h, e}).transpose(1, 2), v.qkv[0], v.qkv[1], v.qkv[2], v.lse,
                         scale, dqkv[0], dqkv[1], dqkv[2], v.pat);
    }
  }
  RECORD_USER_SCOPE("projections");
  for (int64_t j = 0; j < n_inputs; ++j) {
    auto grad_x = grad_xs[j];
    at::bmm_out(grad_x, grad_rows[j], flats[j].transpose(1, 2));
    const int64_t n = projections_of(of_input, j);
    auto gW = at::bmm(xs[j].transpose(1, 2), grad_rows[j]).view({G, d, n, h, e});
    auto gb = has_bias ? grad_rows[j].sum(1).view({G, n, h, e}) : torch::Tensor();
    int64_t slot = 0;
    for (int i = 0; i < 3; ++i)
      if (of_input[i] == j) {
        grads[i] = gW.select(2, slot).permute({0, 2, 1, 3}).contiguous();
        if (has_bias) grads[4 + i] = gb.select(1, slot).contiguous();
        ++slot;
      }
  }
  return grads;
}

// ---- 4. The optimizer's step: per-model gradient clipping and AdamW, by torch's own kernels ----
// The operations of `stack.clip_grad_norm_per_model_` and of `torch.optim.AdamW(fused=True).step()`
// (each group: its step counts, then `_fused_adamw_`), in the same order, so bit for bit the same
// (tested); one call in place of their Python. clip_grads: every gradient [K, ...], clipped per
// model to max_norm where max_norm > 0; groups: the parameters, gradients, moments and step counts
// of each group in turn, group_sizes long each, with its lr and weight decay. Returns the models'
// norms [K] (empty without clipping).
torch::Tensor clip_and_adamw(std::vector<torch::Tensor> clip_grads, double max_norm, std::vector<torch::Tensor> params,
                             std::vector<torch::Tensor> grads, std::vector<torch::Tensor> exp_avgs,
                             std::vector<torch::Tensor> exp_avg_sqs, std::vector<torch::Tensor> steps,
                             std::vector<int64_t> group_sizes, std::vector<double> lrs,
                             std::vector<double> weight_decays, double beta1, double beta2, double eps) {
  at::NoGradGuard no_grad;
  torch::Tensor norms = torch::empty({0});
  if (max_norm > 0) {
    RECORD_USER_SCOPE("tinyinduct::clip_grad_norm_per_model");
    const int64_t K = clip_grads[0].size(0), n = clip_grads.size();
    std::vector<torch::Tensor> slices;
    for (int64_t k = 0; k < K; ++k)
      for (const auto& g : clip_grads) slices.push_back(g.select(0, k));
    norms = at::stack(at::_foreach_norm(slices)).view({K, n}).pow(2).sum(1).sqrt();
    // Python's `max_norm / t` is `t.reciprocal() * max_norm`
    auto coef = ((norms + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
    if (K == 1) {
      at::_foreach_mul_(clip_grads, coef.view(std::vector<int64_t>{}));  // 0-d: its fast path
    } else {
      std::vector<torch::Tensor> coefs;
      for (const auto& g : clip_grads) {
        std::vector<int64_t> shape(g.dim(), 1);
        shape[0] = K;
        coefs.push_back(coef.view(shape));
      }
      at::_foreach_mul_(clip_grads, coefs);
    }
  }
  RECORD_USER_SCOPE("tinyinduct::adamw");
  int64_t start = 0;
  for (size_t i = 0; i < group_sizes.size(); ++i) {
    auto part = [&](const std::vector<torch::Tensor>& v) {
      return std::vector<torch::Tensor>(v.begin() + start, v.begin() + start + group_sizes[i]);
    };
    auto group_steps = part(steps);
    at::_foreach_add_(group_steps, 1);
    at::_fused_adamw_(part(params), part(grads), part(exp_avgs), part(exp_avg_sqs), {}, group_steps, lrs[i], beta1,
                      beta2, weight_decays[i], eps, false, false);
    start += group_sizes[i];
  }
  return norms;
}
