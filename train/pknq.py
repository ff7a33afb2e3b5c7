"""PyTorch emulation of pkn's integer circuit, for quantization-aware training.

Every rule here mirrors the compiler (src/compile/: quantize.rs, range.rs, window.rs, fuse.rs,
lower.rs) and the encoding (src/encoding.rs): pixel quantization, per-channel symmetric weights,
integer accumulators with the zero point as padding value, calibrated (or worst-case) accumulator windows with margin, power-of-two window of B bits,
integer per-channel gains, centring offsets, exact truncation to W bits, one table per channel
evaluated at bin centres, asymmetric activation quantization, and the negacyclic half of the
table for values that leave their window. After `calibrate` on pkn's calibration images, the
eval-mode forward pass computes exactly the integers `pkn infer --clear` computes (up to float
ties), so its accuracy is the integer circuit's accuracy.

Gradients pass straight through every rounding (STE).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# Width of a layer a per-layer width map does not name (src/model/mod.rs DEFAULT_WIDTH).
DEFAULT_WIDTH = 4
# Significant bits kept in a residual gain (src/compile/quantize.rs RESIDUAL_GAIN_BITS).
RESIDUAL_GAIN_BITS = 6
# Largest residual gain, as a power of two (src/compile/quantize.rs RESIDUAL_GAIN_MAX_BITS).
RESIDUAL_GAIN_MAX_BITS = 9


def layer_width(setting, name):
    """A quantization width: one number for every layer, or a dict by layer name (others 4)."""
    return setting.get(name, DEFAULT_WIDTH) if isinstance(setting, dict) else setting


def round_away(x):
    """Rust's f64::round: halves away from zero."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def ste(x, value):
    """Forward `value`, backward identity to `x`."""
    return x + (value - x).detach()


def clipped_range(y, clip):
    """The k-th smallest and k-th largest values, k = floor(clip * (n - 1)) (src/compile/fuse.rs)."""
    flat = y.reshape(-1)
    k = math.floor(clip * (flat.numel() - 1))
    return torch.kthvalue(flat, k + 1).values, torch.kthvalue(flat, flat.numel() - k).values


def bits_for(width):
    """Bits needed to hold `width` distinct values (src/compile/range.rs bits_for)."""
    width = max(int(width), 1)
    return (width - 1).bit_length()


def quantize_pixels(p_u8, bits):
    levels = (1 << bits) - 1
    return torch.floor((p_u8.float() * levels * 2 + 255) / 510)


def quantize_weight(w, bits, per_tensor):
    qmax = float((1 << (bits - 1)) - 1)
    rows = w.reshape(w.shape[0], -1)
    m = rows.detach().abs().amax(dim=1).clamp(min=1e-12)
    if per_tensor:
        m = torch.full_like(m, float(rows.detach().abs().max().clamp(min=1e-12)))
    scale = m / qmax
    shape = [-1] + [1] * (w.dim() - 1)
    q = torch.clamp(ste(w / scale.view(shape), round_away(w / scale.view(shape))), -qmax, qmax)
    return q, scale


def quantize_weight_residual(w, bits, unit):
    """Weights of a layer whose accumulator adds a residual tensor (src/compile/quantize.rs
    quantize_rows_for_residual): per-row units of `unit / H`, H = clamp(floor(unit qmax / max|w|), 1,
    2^RESIDUAL_GAIN_MAX_BITS)
    with only its RESIDUAL_GAIN_BITS highest bits kept, unclamped weights. Returns the integer
    weights, their scales and the gains H."""
    qmax = float((1 << (bits - 1)) - 1)
    rows = w.reshape(w.shape[0], -1)
    m = rows.detach().abs().amax(dim=1).clamp(min=1e-12)
    gain = torch.clamp(torch.floor(unit * qmax / m), 1, 2 ** RESIDUAL_GAIN_MAX_BITS)
    _, exponent = torch.frexp(gain)  # gain = mantissa * 2^exponent, mantissa in [0.5, 1): its bit length
    drop = 2.0 ** torch.clamp(exponent - RESIDUAL_GAIN_BITS, min=0).to(gain.dtype)
    gain = torch.floor(gain / drop) * drop
    scale = unit / gain
    shape = [-1] + [1] * (w.dim() - 1)
    q = ste(w / scale.view(shape), round_away(w / scale.view(shape)))
    return q, scale, gain


def fold_batch_norms(weight, bias, bns):
    """Fold inference-mode batch norms into the weights and bias (src/compile/lower.rs fold_affine_chain)."""
    for m in bns:
        a = m.weight / torch.sqrt(m.running_var + m.eps)
        shift = m.bias - m.running_mean * a
        weight = weight * a.view([-1] + [1] * (weight.dim() - 1))
        bias = a * bias + shift
    return weight, bias


class PKN(nn.Module):
    """(cp + z)^2, cp one learnable scalar per layer (Kerv2d in PolyKervNets)."""

    def __init__(self):
        super().__init__()
        self.cp = nn.Parameter(torch.tensor(1.0))

    def forward(self, z):
        return (self.cp + z) ** 2


class QState:
    """An integer tensor and its float meaning scale * (q - zero_point)."""

    def __init__(self, q, scale, zero_point, lo, hi):
        self.q, self.scale, self.zero_point, self.lo, self.hi = q, scale, zero_point, lo, hi


class QLinear(nn.Module):
    """A conv2d or dense layer followed by its element-wise chain, compiled as pkn does.

    `chain` is a list of modules (PKN, BatchNorm2d/BatchNorm1d) applied to the float pre-activation.
    With an empty chain and `output=True` it is the output layer (no table, per-tensor scale).
    """

    def __init__(self, layer, chain, weight_bits, act_bits, lut_bits, margin, output=False, worst_case=False,
                 act_clip=0.001, pre_add=None):
        super().__init__()
        self.layer = layer
        self.chain = nn.ModuleList(chain)
        # With `pre_add` (a list, possibly empty, of batch norms) the layer ends in a residual add:
        # forward takes the residual tensor too, and `chain` is what follows the add.
        self.residual = pre_add is not None
        self.pre_add = nn.ModuleList(pre_add or [])
        self.weight_bits, self.act_bits, self.lut_bits = weight_bits, act_bits, lut_bits
        self.margin, self.output, self.worst_case, self.act_clip = margin, output, worst_case, act_clip
        c = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        self.register_buffer("acc_lo", torch.zeros(c))
        self.register_buffer("acc_hi", torch.zeros(c))
        self.register_buffer("y_lo", torch.tensor(0.0))
        self.register_buffer("y_hi", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(0))
        self.calibrating = False
        self.frozen = False
        self.float_mode = False

    def float_forward(self, x, r=None):
        """The plain float network (no quantization): pre-training before the circuit is in the loop."""
        v = x.scale * (x.q - x.zero_point)
        z = self.layer(v if isinstance(self.layer, nn.Conv2d) else v.flatten(1))
        if self.residual:
            for m in self.pre_add:
                z = m(z)
            z = z + r.scale * (r.q - r.zero_point)
        return QState(self.apply_chain(z), 1.0, 0, 0.0, 0.0)

    def ema(self, buf, value):
        if self.seen == 0:
            buf.copy_(value)
        else:
            buf.mul_(0.99).add_(0.01 * value)

    def accumulate(self, x, q):
        if isinstance(self.layer, nn.Conv2d):
            p = self.layer.padding[0]
            xp = F.pad(x.q, [p] * 4, value=float(x.zero_point))
            return F.conv2d(xp, q, stride=self.layer.stride)
        return F.linear(x.q.flatten(1), q)

    def worst(self, q, x, r=None, gain=None):
        """Per-channel worst-case accumulator range over all positions (padding included), plus the
        residual term's range."""
        lo, hi = self.worst_linear(q, x)
        if r is not None:
            lo, hi = lo + gain * r.lo, hi + gain * r.hi
        return lo, hi

    def worst_linear(self, q, x):
        if isinstance(self.layer, nn.Conv2d):
            p = self.layer.padding[0]
            shape = (1,) + tuple(x.q.shape[1:])
            ones = F.pad(torch.ones(shape, dtype=q.dtype, device=q.device), [p] * 4, value=0.0)
            pads = F.pad(torch.zeros(shape, dtype=q.dtype, device=q.device), [p] * 4, value=1.0)
            pos, neg = q.clamp(min=0), q.clamp(max=0)
            hi = F.conv2d(ones, pos * x.hi + neg * x.lo, stride=self.layer.stride)
            lo = F.conv2d(ones, pos * x.lo + neg * x.hi, stride=self.layer.stride)
            padc = F.conv2d(pads, q * float(x.zero_point), stride=self.layer.stride)
            hi, lo = hi + padc, lo + padc
            return lo.amin(dim=(0, 2, 3)), hi.amax(dim=(0, 2, 3))
        pos, neg = q.clamp(min=0), q.clamp(max=0)
        return (pos * x.lo + neg * x.hi).sum(1), (pos * x.hi + neg * x.lo).sum(1)

    def apply_chain(self, z):
        for m in self.chain:
            z = m(z)
        return z

    def forward(self, x, r=None):
        if self.float_mode:
            return self.float_forward(x, r).q if self.output else self.float_forward(x, r)
        bias = self.layer.bias
        if bias is None:
            bias = self.layer.weight.new_zeros(self.layer.weight.shape[0])
        gain = None
        if self.residual:
            if self.training and not self.frozen:
                # Keep the batch norms' running statistics learning; the folded form uses them.
                z = self.layer((x.q - x.zero_point) * x.scale)
                for m in self.pre_add:
                    z = m(z)
            weight, bias = fold_batch_norms(self.layer.weight, bias, self.pre_add)
            q, wscale, gain = quantize_weight_residual(weight, self.weight_bits, r.scale / x.scale)
        else:
            q, wscale = quantize_weight(self.layer.weight, self.weight_bits, self.output)
        acc = self.accumulate(x, q)
        sumw = q.detach().reshape(q.shape[0], -1).sum(1)
        zero_term = x.zero_point * sumw
        ws = wscale * x.scale
        view = [1, -1] + [1] * (acc.dim() - 2)
        if self.residual:
            acc = acc + gain.view(view) * r.q
            zero_term = zero_term + gain * r.zero_point
        if self.output:
            scale = float(ws[0])
            offsets = round_away(bias.detach() / scale) - round_away(zero_term)
            logits_int = acc.detach() + offsets.view(view)
            self.last_scores = logits_int.detach()
            logits = ws.view(view) * (acc - zero_term.view(view)) + bias.view(view)
            return ste(logits, logits_int * scale)
        dims = [0] + list(range(2, acc.dim()))
        raw = acc.detach()
        if self.calibrating:
            self.acc_lo.copy_(raw.amin(dim=dims))
            self.acc_hi.copy_(raw.amax(dim=dims))
        elif self.training and not self.frozen:
            self.ema(self.acc_lo, raw.amin(dim=dims))
            self.ema(self.acc_hi, raw.amax(dim=dims))
        # Window planning, exactly as the compiler does it.
        wlo, whi = self.worst(q.detach(), x, r, gain)
        worst_bits = max(bits_for(int(h - l + 1)) for l, h in zip(wlo.tolist(), whi.tolist()))
        lo_c, hi_c = torch.round(self.acc_lo), torch.round(self.acc_hi)
        need = [math.ceil((h - l + 1) * (1 + self.margin)) for l, h in zip(lo_c.tolist(), hi_c.tolist())]
        cal_bits = max(bits_for(n) for n in need)
        if not self.worst_case and cal_bits < worst_bits:
            win_lo, win_hi, bits = lo_c.tolist(), hi_c.tolist(), cal_bits
        else:
            win_lo, win_hi = wlo.tolist(), whi.tolist()
            need = [int(h - l + 1) for l, h in zip(win_lo, win_hi)]
            bits = worst_bits
        B = max(bits, self.lut_bits)
        s = B - self.lut_bits
        gains = [max(1, (1 << B) // max(n, 1)) for n in need]
        offsets = [(1 << (B - 1)) - math.floor((l * g + h * g + 1) / 2) for l, h, g in zip(win_lo, win_hi, gains)]
        g = torch.tensor(gains, dtype=acc.dtype, device=acc.device).view(view)
        off = torch.tensor(offsets, dtype=acc.dtype, device=acc.device).view(view)
        m = raw * g + off
        if self.training:
            # Saturate while learning (windows still move); the circuit itself wraps, below.
            t = torch.clamp(torch.floor(m / 2 ** s), 0, 2 ** self.lut_bits - 1)
            neg = torch.zeros_like(t, dtype=torch.bool)
        else:
            t_full = torch.remainder(torch.floor(m / 2 ** s), 2 ** (self.lut_bits + 1))
            # Every table (a split one too, since circuit version 5) negates its output past the
            # padding bit.
            neg = t_full >= 2 ** self.lut_bits
            t = torch.remainder(t_full, 2 ** self.lut_bits)
        centre = (t * 2 ** s + (2 ** s - 1) / 2 - off) / g
        pre = lambda a: ws.view(view) * (a - zero_term.view(view)) + bias.view(view)
        y = self.apply_chain(pre(ste(acc, centre)))
        if self.calibrating or (self.training and not self.frozen):
            y_exact = self.apply_chain(pre(raw)).detach()
            ylo, yhi = clipped_range(y_exact, self.act_clip)
            if self.calibrating:
                self.y_lo.copy_(ylo)
                self.y_hi.copy_(yhi)
            else:
                self.ema(self.y_lo, ylo)
                self.ema(self.y_hi, yhi)
                self.seen += 1
        levels = (1 << self.act_bits) - 1
        a_lo, a_hi = min(float(self.y_lo), 0.0), max(float(self.y_hi), 0.0)
        a_scale = max((a_hi - a_lo) / levels, 1e-12)
        a_zp = int(min(max(round_away(torch.tensor(-a_lo / a_scale)).item(), 0), levels))
        qy = torch.clamp(ste(y / a_scale, round_away(y / a_scale)) + a_zp, 0, levels)
        qy = torch.where(neg, -qy, qy)
        return QState(qy, a_scale, a_zp, 0.0, float(levels))


class SumPool(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x):
        k2 = self.kernel * self.kernel
        q = F.avg_pool2d(x.q, self.kernel, self.stride) * k2
        return QState(q, x.scale / k2, x.zero_point * k2, x.lo * k2, x.hi * k2)


def referenced_names(specs):
    """Names residual adds read, anywhere in the layer list."""
    for l in specs:
        if l["op"] == "add":
            yield l["from"]
            yield from referenced_names(l.get("shortcut", []))


class QNet(nn.Module):
    """pkn's architecture list as QLinear / SumPool stages, residual adds included, compiled in the
    compiler's order (a shortcut's layers before the layer that adds it)."""

    def __init__(self, arch, margin=0.25, act_clip=0.001):
        """Bit widths come from the architecture's `quantization` (docs/model-format.md)."""
        super().__init__()
        self.arch = arch
        q = arch["quantization"]
        self.input_bits = q["input_bits"]
        self.widths = dict(weight_bits=q["weight_bits"], act_bits=q["activation_bits"],
                           lut_bits=q.get("table_bits", DEFAULT_WIDTH))
        self.cfg = dict(margin=margin, act_clip=act_clip)
        self.names = {}
        self.qlinears = nn.ModuleList()  # every QLinear in compile (and calibration) order
        self.referenced = set(referenced_names(arch["layers"]))
        self.plan = self.build(arch["layers"], top=True)

    def build(self, specs, top):
        """Stages for a layer list: ("stage", module), ("residual", QLinear, from, shortcut plan),
        ("save", name)."""
        plan = []
        i = 0
        while i < len(specs):
            l = specs[i]
            if l["op"] in ("conv2d", "dense"):
                if l["op"] == "conv2d":
                    mod = nn.Conv2d(l["in_channels"], l["out_channels"], l["kernel"],
                                    stride=l.get("stride", 1), padding=l.get("padding", 0))
                else:
                    mod = nn.Linear(l["in_features"], l["out_features"])
                self.names[l["name"]] = mod
                c = l["out_channels"] if l["op"] == "conv2d" else l["out_features"]
                j, chain = self.elementwise(specs, i + 1, c, l["op"] == "conv2d")
                rest = [s["op"] for s in specs[j:]]
                if j < len(specs) and specs[j]["op"] == "add":
                    add = specs[j]
                    shortcut = self.build(add.get("shortcut", []), top=False)
                    j, post = self.elementwise(specs, j + 1, c, l["op"] == "conv2d")
                    ql = QLinear(mod, post, output=False, pre_add=chain, **self.layer_cfg(l["name"]))
                    self.qlinears.append(ql)
                    plan.append(("residual", ql, add["from"], shortcut))
                    last = specs[j - 1].get("name")
                else:
                    is_out = top and not chain and all(op in ("avg_pool", "flatten") for op in rest)
                    ql = QLinear(mod, chain, output=is_out, **self.layer_cfg(l["name"]))
                    self.qlinears.append(ql)
                    plan.append(("stage", ql))
                    last = specs[j - 1].get("name")
                i = j
                if last in self.referenced:
                    plan.append(("save", last))
            elif l["op"] == "avg_pool":
                plan.append(("stage", SumPool(l["kernel"], l.get("stride") or l["kernel"])))
                i += 1
            elif l["op"] == "flatten":
                i += 1
            else:
                raise ValueError(f"unsupported op {l['op']} here")
        return plan

    def layer_cfg(self, name):
        return dict(self.cfg, **{key: layer_width(w, name) for key, w in self.widths.items()})

    def elementwise(self, specs, j, channels, conv):
        chain = []
        while j < len(specs) and specs[j]["op"] in ("pkn", "batch_norm"):
            s = specs[j]
            if s["op"] == "pkn":
                m = PKN()
            else:
                m = nn.BatchNorm2d(channels, eps=s.get("eps", 1e-5)) if conv else nn.BatchNorm1d(channels)
            self.names[s["name"]] = m
            chain.append(m)
            j += 1
        return j, chain

    def run(self, plan, x, saved):
        for step in plan:
            if step[0] == "stage":
                x = step[1](x)
            elif step[0] == "save":
                saved[step[1]] = x
            else:
                _, ql, source, shortcut = step
                r = self.run(shortcut, saved[source], saved)
                x = ql(x, r)
        return x

    def forward(self, pixels_u8):
        levels = (1 << self.input_bits) - 1
        dtype = next(self.parameters()).dtype
        q = quantize_pixels(pixels_u8, self.input_bits).to(dtype).unsqueeze(1)
        return self.run(self.plan, QState(q, 1.0 / levels, 0, 0.0, float(levels)), {})

    def calibrate(self, images_u8):
        """Set every window and activation range from the calibration images, as the compiler does."""
        self.eval()
        with torch.no_grad():
            for st in self.qlinears:
                if not st.output:
                    # Layers before st already hold their final windows: st sees what the compiler sees.
                    st.calibrating = True
                    self(images_u8)
                    st.calibrating = False

    def set_float(self, on=True):
        """Run the float network instead of the circuit (see QLinear.float_forward)."""
        for st in self.qlinears:
            st.float_mode = on

    def freeze(self, frozen=True):
        """Keep windows, activation ranges and batch-norm statistics fixed while fine-tuning."""
        for st in self.qlinears:
            st.frozen = frozen
            for m in list(st.chain) + list(st.pre_add):
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval() if frozen else m.train()

    def load_pkn_tensors(self, tensors):
        """The inverse of state_dict_for_pkn (a missing bias is zero)."""
        for name, m in self.names.items():
            own = {k: v for k, v in m.state_dict().items() if k != "num_batches_tracked"}
            for k in own:
                if f"{name}.{k}" in tensors:
                    own[k] = tensors[f"{name}.{k}"].to(own[k].dtype)
                elif k == "bias":
                    own[k] = torch.zeros_like(own[k])
            m.load_state_dict(own, strict=False)

    def state_dict_for_pkn(self):
        out = {}
        for name, m in self.names.items():
            for k, v in m.state_dict().items():
                if k != "num_batches_tracked":
                    out[f"{name}.{k}"] = v.detach().float().contiguous()
        return out
