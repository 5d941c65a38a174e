"""CUDA sources and launchers of the CuPy backend (see the package docstring).

The softmax cross-entropy row kernel follows backends/numba/_softmax.py line for line: per row, the
maximum ``m`` (a NaN anywhere, a ``+inf`` or a row of ``-inf`` make the row non-finite), the shift
``x - m`` (exact in float64 for float32 inputs; for float64 inputs a TwoSum pair ``s + k``),
``e = exp(s)(1 + k)``, ``rest`` = the sum of ``e`` over entries below 1 plus the count of ones minus 1,
``L = log1p(rest)``, then the loss and the gradient entries of the cancellation-free form, each
thread writing its own columns (the target, the heavy class and the unique maximum by formula).
"""

from __future__ import annotations

import cupy as cp
import numpy as np

from .. import _plan

BLOCK = 256

_SOFTMAX_SOURCE = r"""
#define BLOCK 256
#define REFLOSS_INF __longlong_as_double(0x7ff0000000000000LL)
#define REFLOSS_NAN __longlong_as_double(0x7ff8000000000000LL)

__device__ inline void shift_exp(T x, T m, double* s_out, double* k_out) {
    // s + k = x - m; for float, exact in double; for double, TwoSum (k = 0 where s is not finite)
    if (sizeof(T) == 4) {
        *s_out = (double)x - (double)m;
        *k_out = 0.0;
    } else {
        double s = (double)x - (double)m;
        double k = 0.0;
        if (isfinite(s)) {
            double bb = s - (double)x;
            k = ((double)x - (s - bb)) + (-(double)m - bb);
        }
        *s_out = s;
        *k_out = k;
    }
}

__device__ inline double block_sum(double v, double* buf) {
    // a fixed tree over the block's threads: the same order for every launch
    int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int w = BLOCK / 2; w > 0; w >>= 1) {
        if (t < w) buf[t] = buf[t] + buf[t + w];
        __syncthreads();
    }
    double out = buf[0];
    __syncthreads();
    return out;
}

extern "C" __global__ void softmax_ce(
    const T* z, const long long* target, const bool* keep, const double* weight, double total_w,
    long long heavy, double heavy_rest, double cold, double hx, const double* cot, double out_scale,
    const double* slope, int want_grad, long long n, long long classes, T* loss, T* grad)
{
    __shared__ double buf[BLOCK];
    __shared__ int flags[BLOCK];
    int t = threadIdx.x;
    for (long long i = blockIdx.x; i < n; i += gridDim.x) {
        const T* zi = z + i * classes;
        T* gi = grad + i * classes;
        // maximum and NaN
        double mx = -REFLOSS_INF;
        int nan = 0;
        for (long long c = t; c < classes; c += BLOCK) {
            double x = (double)zi[c];
            if (isnan(x)) nan = 1; else mx = fmax(mx, x);
        }
        buf[t] = mx;
        flags[t] = nan;
        __syncthreads();
        for (int w = BLOCK / 2; w > 0; w >>= 1) {
            if (t < w) { buf[t] = fmax(buf[t], buf[t + w]); flags[t] |= flags[t + w]; }
            __syncthreads();
        }
        double m64 = buf[0];
        int finite = !flags[0] && isfinite(m64);
        __syncthreads();
        double ci = cot[i];
        if (!finite || !keep[i]) {
            if (t == 0) loss[i] = keep[i] ? (T)REFLOSS_NAN : (T)0;
            if (want_grad) {
                T g = finite ? (T)(ci * 0.0) : (T)REFLOSS_NAN;
                for (long long c = t; c < classes; c += BLOCK) gi[c] = g;
            }
            continue;
        }
        T m = (T)m64;
        long long y = target[i];
        // rest: e below 1 summed, ones counted (the maxima, and entries that round to 1)
        double acc = 0.0, ones = 0.0, wacc = 0.0;
        for (long long c = t; c < classes; c += BLOCK) {
            double s, k;
            shift_exp(zi[c], m, &s, &k);
            double e0 = exp(s);
            double e = (double)(T)(e0 + e0 * k);
            if (e == 1.0) ones += 1.0; else acc += e;
            double wc = weight[c];
            if (cold > 0.0 && wc != 0.0) wacc += wc * -(s + k);
        }
        double n_ones = block_sum(ones, buf);
        double rest = block_sum(acc, buf) + (n_ones - 1.0);
        double big_l = log1p(rest);
        double sy, ky;
        shift_exp(zi[y], m, &sy, &ky);
        double wy = weight[y];
        double value = (wy == 0.0) ? 0.0 : -(hx * wy * ((sy - big_l) + ky));
        if (cold > 0.0) value = value + cold * (total_w * big_l + block_sum(wacc, buf));
        if (t == 0) loss[i] = (T)value;
        if (!want_grad) continue;
        double d = 1.0 + rest;
        double e0y = exp(sy);
        double ey = e0y + e0y * ky;
        double em1_y = (sy == 0.0) ? 0.0 : expm1(sy) + e0y * ky;
        double comp_y = (rest - em1_y) / d;
        double others_y = wy * hx;
        for (long long c = t; c < classes; c += BLOCK) {
            double s, k;
            shift_exp(zi[c], m, &s, &k);
            double e0 = exp(s);
            double pc = (e0 + e0 * k) / d;
            double wc = weight[c];
            double g;
            if (c == y) {
                double w_rest_y = (y == heavy) ? heavy_rest : total_w - wy;
                g = out_scale * ((ci * ((cold * w_rest_y) * (ey / d) - wy * (cold + hx) * comp_y)) * slope[i]);
            } else if (cold == 0.0) {
                g = out_scale * (ci * (wy * pc));
            } else {
                double w_rest = (c == heavy) ? heavy_rest : total_w - wc;
                double comp = (n_ones == 1.0 && zi[c] == m) ? rest / d : 1.0 - pc;
                g = out_scale * (ci * ((cold * w_rest + others_y) * pc - (cold * wc) * comp));
            }
            gi[c] = (T)g;
        }
        __syncthreads();
    }
}
"""

_MODULES = {}


def _softmax_kernel(dtype):
    name = np.dtype(dtype).name
    if name not in _MODULES:
        ctype = "float" if name == "float32" else "double"
        source = _SOFTMAX_SOURCE.replace("\n#define BLOCK 256\n", f"\n#define BLOCK {BLOCK}\ntypedef {ctype} T;\n")
        _MODULES[name] = cp.RawModule(code=source, options=("--std=c++11",)).get_function("softmax_ce")
    return _MODULES[name]


def softmax_rows(rows, labels, keep, weight, total, heavy, heavy_rest, cold, hx, cot, out_scale, slope, want):
    """Launch the row kernel on device arrays; returns ``(loss, grad or None)``."""
    n, classes = rows.shape
    loss = cp.empty(n, rows.dtype)
    grad = cp.empty_like(rows) if want else cp.empty((1, classes), rows.dtype)
    grid = (int(min(n, 65535)),)
    _softmax_kernel(rows.dtype)(
        grid, (BLOCK,),
        (rows, labels, keep, weight, np.float64(total), np.int64(heavy), np.float64(heavy_rest), np.float64(cold),
         np.float64(hx), cot, np.float64(out_scale), slope, np.int32(want), np.int64(n), np.int64(classes), loss, grad),
    )
    return loss, (grad if want else None)


# --------------------------------------------------------------------------------------------------
# Elementwise sigmoid losses (float64 arithmetic; refloss.xp's softplus and sigmoid forms)

_SIGMOID_PARTS = r"""
    double xv = (double)x;
    double e = exp(-fabs(xv));
    double lg = log1p(e);
    double sp_pos = (xv > 0.0 ? xv : 0.0) + lg;
    double sp_neg = (-xv > 0.0 ? -xv : 0.0) + lg;
    double hi = 1.0 / (1.0 + e), lo = e / (1.0 + e);
    double sig_pos = xv >= 0.0 ? hi : lo;
    double sig_neg = -xv >= 0.0 ? hi : lo;
"""

_XMUL = r"""
__device__ inline double xmul(double a, double b) { return a == 0.0 ? (isnan(b) ? b : 0.0) : a * b; }
"""

_BCE = cp.ElementwiseKernel(
    "T x, T y, T w, T pw, float64 cot, float64 keep_hi, float64 eps_half, bool smooth, float64 one_minus_eps",
    "T loss, T dx, T dy",
    _SIGMOID_PARTS + r"""
    T ys = smooth ? (T)((T)(keep_hi * (double)y) + (T)eps_half) : y;
    double yv = (double)ys, wv = (double)w, pwv = (double)pw;
    loss = (T)(wv * (xmul(pwv * yv, sp_neg) + xmul(1.0 - yv, sp_pos)));
    double g = cot * wv;
    dx = (T)(g * (-pwv * yv * sig_neg + (1.0 - yv) * sig_pos));
    dy = (T)((g * one_minus_eps) * (pwv * sp_neg - sp_pos));
    """,
    "refloss_bce_with_logits",
    preamble=_XMUL,
)

_FOCAL = cp.ElementwiseKernel(
    "T x, T y, float64 cot, float64 a_pos, float64 a_neg, float64 gamma, int32 mode",
    "T loss, T dx",
    _SIGMOID_PARTS + r"""
    double yv = (double)y, p = sig_pos, q = sig_neg;
    double qg = mode == 0 ? 1.0 : mode == 1 ? q : mode == 2 ? q * q : mode == 3 ? q * q * q : sqrt(q);
    double pg = mode == 0 ? 1.0 : mode == 1 ? p : mode == 2 ? p * p : mode == 3 ? p * p * p : sqrt(p);
    loss = (T)(xmul(a_pos * qg * yv, sp_neg) + xmul(a_neg * pg * (1.0 - yv), sp_pos));
    double pos = a_pos * yv * qg * (q + gamma * xmul(p, sp_neg));
    double neg = a_neg * (1.0 - yv) * pg * (p + gamma * xmul(q, sp_pos));
    dx = (T)(cot * (neg - pos));
    """,
    "refloss_sigmoid_focal",
    preamble=_XMUL,
)


# --------------------------------------------------------------------------------------------------
# Adapters (the protocol of refloss.backends); NumPy inputs travel to the device and back


def _device(a):
    return None if a is None else cp.asarray(a)


def _host_like(on_host, value):
    if value is None or not on_host:
        return value
    return cp.asnumpy(value)


class _Kernel:
    def forward(self, xp, inputs, params):
        return self._call(inputs, params, None)

    def value_and_grad(self, xp, inputs, params, cot_for):
        return self._call(inputs, params, cot_for)

    def _call(self, inputs, params, cot_for):
        on_host = isinstance(inputs[0], np.ndarray)
        template = np.empty if on_host else cp.empty
        dev_inputs = [_device(a) for a in inputs]
        dev_params = {k: (_device(v) if isinstance(v, (np.ndarray, cp.ndarray)) else v) for k, v in params.items()}
        cot = None if cot_for is None else (lambda shape, dtype: cp.asarray(cot_for(template(shape, dtype))))
        out = self._run(dev_inputs, dev_params, cot)
        if out is None:
            return None
        if cot_for is None:
            return _host_like(on_host, out)
        value, grads = out
        return _host_like(on_host, value), tuple(_host_like(on_host, g) for g in grads)


class _CrossEntropy(_Kernel):
    def _run(self, inputs, params, cot_for):
        logits, target = inputs
        plan = _plan.cross_entropy_plan(cp, logits, target, params)
        if plan is None:
            return None
        rows, shape = plan["rows"], plan["shape"]
        n = rows.shape[0]
        want = cot_for is not None
        cot = _plan.per_sample(cp, cot_for(shape, rows.dtype), shape, rows.dtype) if want else cp.zeros(n)
        loss, grad = softmax_rows(
            rows, plan["labels"], plan["keep"], plan["weight"], plan["total"], plan["heavy"], plan["heavy_rest"],
            plan["cold"], plan["hx"], cot, 1.0, cp.ones(n), want,
        )
        loss = loss.reshape(shape)
        return (loss, (plan["back"](grad), None)) if want else loss


class _Margin(_Kernel):
    def __init__(self, name):
        self.name = name

    def _run(self, inputs, params, cot_for):
        features, labels, weights = inputs
        plan = _plan.margin_plan(cp, self.name, features, labels, weights, params)
        if plan is None:
            return None
        logits = plan["logits"]
        n, classes = logits.shape
        want = cot_for is not None
        cot = _plan.per_sample(cp, cot_for((n,), np.float32), (n,), np.float32) if want else cp.zeros(n)
        loss, grad = softmax_rows(
            logits, plan["labels"], cp.ones(n, bool), cp.ones(classes), float(classes), -1, 0.0, 0.0, 1.0, cot,
            plan["scale"], plan["slope"], want,
        )
        loss = loss.astype(np.float32)
        if not want:
            return loss
        gx = _plan.tangent(cp, grad @ plan["wh"], plan["xh"], plan["xn"])
        gw = _plan.tangent(cp, grad.T @ plan["xh"], plan["wh"], plan["wn"])
        return loss, (gx.astype(np.float32), None, gw.astype(np.float32))


def _binary_ok(logits, target):
    return str(logits.dtype) in _plan.FLOATS and target.dtype == logits.dtype and logits.shape == target.shape and logits.size


class _BCEWithLogits(_Kernel):
    def _run(self, inputs, params, cot_for):
        x, y = inputs
        if not _binary_ok(x, y):
            return None
        dtype = x.dtype
        one = cp.ones(1, dtype)
        w = one if params["weight"] is None else params["weight"].astype(dtype)
        pw = one if params["pos_weight"] is None else params["pos_weight"].astype(dtype)
        eps = params["label_smoothing"]
        want = cot_for is not None
        cot = _plan.broadcast(cp, cot_for(x.shape, dtype), x.shape).astype(np.float64) if want else cp.zeros(x.shape)
        loss, dx, dy = _BCE(
            x, y, w, pw, cot, float(dtype.type(1 - eps)), float(dtype.type(eps / 2)), bool(eps), 1.0 - eps,
        )
        return (loss, (dx, dy)) if want else loss


class _SigmoidFocal(_Kernel):
    def _run(self, inputs, params, cot_for):
        x, y = inputs
        gamma = float(params["gamma"])
        if not _binary_ok(x, y) or gamma not in _plan.FOCAL_MODES:
            return None
        alpha = params["alpha"]
        a_pos, a_neg = (1.0, 1.0) if alpha is None else (float(alpha), float(1.0 - alpha))
        want = cot_for is not None
        cot = _plan.broadcast(cp, cot_for(x.shape, x.dtype), x.shape).astype(np.float64) if want else cp.zeros(x.shape)
        loss, dx = _FOCAL(x, y, cot, a_pos, a_neg, gamma, np.int32(_plan.FOCAL_MODES[gamma]))
        return (loss, (dx, None)) if want else loss


CROSS_ENTROPY = _CrossEntropy()
COSFACE = _Margin("cosface_loss")
ARCFACE = _Margin("arcface_loss")
COMBINED = _Margin("combined_margin_loss")
BCE_WITH_LOGITS = _BCEWithLogits()
SIGMOID_FOCAL = _SigmoidFocal()
