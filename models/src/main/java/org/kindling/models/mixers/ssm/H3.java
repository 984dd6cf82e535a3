package org.kindling.models.mixers.ssm;

import org.kindling.models.mixers.MixerState;
import org.kindling.models.mixers.TokenMixer;
import org.kindling.models.nn.Activation;
import org.kindling.models.nn.Activations;
import org.kindling.models.nn.Init;
import org.kindling.models.nn.LayerContext;
import org.kindling.models.nn.Linear;
import org.kindling.models.nn.ParamGroup;
import org.kindling.models.nn.Params;
import org.kindling.models.nn.Seqs;
import org.kindling.ops.Backend;
import org.kindling.ops.BinaryOp;
import org.kindling.ops.Device;
import org.kindling.ops.Gemm;
import org.kindling.ops.Tensor;
import org.kindling.ops.Varlen;

/**
 * H3 over packed sequences, per head h of HS = C/NH channels:
 * <pre>
 *   q, k, v = Linear(x)                      [T, C]
 *   k′      = shift(k) + Dk⊙k                [T, C]
 *   kv[h]   = k′_h v_hᵀ                       [T, NH·HS·HS]  (W = C·HS channels)
 *   s       = SSM(kv) + D⊙kv                 [T, W]         (diagonal, S4D-Lin)
 *   m_h     = q_hᵀ s_h                        [T, C]
 *   y       = out(m)
 * </pre>
 * The shift SSM (A a shift matrix, B = e₁) has the kernel K[j] = C̃[j] for j &lt; d_state, so it is
 * exactly a causal convolution with a learned kernel [d_state, C]: the shift matrix never exists as
 * a tensor. Decoding keeps, per sequence, the last d_state − 1 keys (the convolution's history) and
 * the diagonal SSM's [W, d_state/2, 2] state: constant in the context length.
 */
final class H3 implements TokenMixer {
    final Linear q;
    final Linear k;
    final Linear v;
    final Linear out;
    /** The shift SSM's kernel [L, C] (L = d_state, tap 0 first) and skip Dk [C]. */
    final Params.Handle shift;
    final Params.Handle shiftD;
    final DiagonalSsm ssm;
    private final int c;
    private final int heads;
    private final int hs;
    private final int width;
    private final int taps;
    private final Device dev;
    private final Activations acts;
    /** Saved for backward: q, k, v, k′ and m [T, C]; kv and s [T, W]. */
    private final Activation tq;
    private final Activation tk;
    private final Activation tv;
    private final Activation kp;
    private final Activation kv;
    private final Activation s;
    private final Activation mix;
    /** Backward scratch: dm, dq, dk, dv, dk′ and a skip product [T, C]; ds, dkv [T, W]. */
    private final Activation dmix;
    private final Activation dq;
    private final Activation dk;
    private final Activation dv;
    private final Activation dkp;
    private final Activation prod;
    private final Activation ds;
    private final Activation dkv;
    /** Decoding: q, k, v, k′, m and a skip product [R, C]; kv and s [R, W]; one sequence's conv window and output [L − 1 + n, C]. */
    private final Activation stepQ;
    private final Activation stepK;
    private final Activation stepV;
    private final Activation stepKp;
    private final Activation stepMix;
    private final Activation stepProd;
    private final Activation stepKv;
    private final Activation stepS;
    private final Activation stepWindow;
    private final Activation stepConv;

    H3(LayerContext ctx, H3Spec spec) {
        this.c = ctx.dModel();
        this.heads = spec.heads();
        this.hs = c / heads;
        this.width = c * hs;
        this.taps = spec.dState();
        Params.Builder pb = ctx.params();
        this.q = new Linear(pb, ctx.child("q"), c, c, true, ctx.initStd());
        this.k = new Linear(pb, ctx.child("k"), c, c, true, ctx.initStd());
        this.v = new Linear(pb, ctx.child("v"), c, c, true, ctx.initStd());
        // The shift SSM's C̃ row, standard normal as H3's code draws it; Dk is the SSM's skip.
        this.shift = pb.add(ctx.child("shift"), Init.normal(1.0), ParamGroup.DECAY, taps, c);
        this.shiftD = pb.add(ctx.child("shift_d"), Init.normal(1.0), ParamGroup.NO_DECAY, c);
        this.ssm = new DiagonalSsm(ctx, "ssm.", width, spec.dState(), false, H3Spec.DT_MIN, H3Spec.DT_MAX,
                spec.dynamicsLr(), spec.block());
        this.out = new Linear(pb, ctx.child("out"), c, c, true, ctx.residualStd());
        this.dev = ctx.device();
        this.acts = new Activations(dev, ctx.name(), ctx.step().workspace());
        tq = acts.f32("q");
        tk = acts.f32("k");
        tv = acts.f32("v");
        kp = acts.f32("kp");
        kv = acts.f32("kv");
        s = acts.f32("s");
        mix = acts.f32("mix");
        dmix = acts.scratch("h3.dmix");
        dq = acts.scratch("h3.dq");
        dk = acts.scratch("h3.dk");
        dv = acts.scratch("h3.dv");
        dkp = acts.scratch("h3.dkp");
        prod = acts.scratch("h3.prod");
        ds = acts.scratch("h3.ds");
        dkv = acts.scratch("h3.dkv");
        stepQ = acts.scratch("h3.step_q");
        stepK = acts.scratch("h3.step_k");
        stepV = acts.scratch("h3.step_v");
        stepKp = acts.scratch("h3.step_kp");
        stepMix = acts.scratch("h3.step_mix");
        stepProd = acts.scratch("h3.step_prod");
        stepKv = acts.scratch("h3.step_kv");
        stepS = acts.scratch("h3.step_s");
        stepWindow = acts.scratch("h3.step_window");
        stepConv = acts.scratch("h3.step_conv");
    }

    /**
     * One product per token and head, {@code g} laid out for T·NH of them; with HS = 1 every one
     * is a scalar product, done elementwise.
     */
    private void product(Backend be, Gemm g, Tensor dst, Tensor a, Tensor b) {
        if (hs == 1) {
            be.binary(BinaryOp.MUL, dst, a, b);
        } else {
            be.gemm(g, dst, a, b);
        }
    }

    /** kv[t, h] = a_h b_hᵀ [HS, HS] for a, b [t, C]. */
    private void outer(Backend be, Tensor kvOut, Tensor a, Tensor b, int t) {
        product(be, Gemm.batched(t * heads, false, false, hs, hs, 1), kvOut, a, b);
    }

    /** m[t, h] = a_hᵀ s_h [HS] for a [t, C], s [t, W]. */
    private void readout(Backend be, Tensor m, Tensor a, Tensor st, int t) {
        product(be, Gemm.batched(t * heads, false, false, 1, hs, hs), m, a, st);
    }

    /** r[t, h] = s_h b_h [HS] for s [t, W], b [t, C]. */
    private void apply(Backend be, Tensor r, Tensor st, Tensor b, int t) {
        product(be, Gemm.batched(t * heads, false, false, hs, 1, hs), r, st, b);
    }

    @Override
    public void forward(Tensor y, Tensor x, Seqs seqs) {
        int t = x.rows();
        Backend be = y.device().backend();
        Tensor sq = tq.write(t, c);
        Tensor sk = tk.write(t, c);
        Tensor sv = tv.write(t, c);
        Tensor skp = kp.write(t, c);
        Tensor skv = kv.write(t, width);
        Tensor ss = s.write(t, width);
        Tensor m = mix.write(t, c);
        q.forward(sq, x);
        k.forward(sk, x);
        v.forward(sv, x);
        be.causalConvForward(skp, sk, shift.value(), seqs.varlen());
        DiagonalSsm.skipForward(be, skp, sk, shiftD.value(), prod.write(t, c));
        outer(be, skv, skp, sv, t);
        ssm.forward(ss, skv, seqs.varlen());
        readout(be, m, sq, ss, t);
        out.forward(y, m);
    }

    @Override
    public void backward(Tensor dx, Tensor dy, Seqs seqs) {
        int t = dy.rows();
        Backend be = dy.device().backend();
        Tensor sq = tq.saved(t, c);
        Tensor sk = tk.saved(t, c);
        Tensor sv = tv.saved(t, c);
        Tensor skp = kp.saved(t, c);
        Tensor skv = kv.saved(t, width);
        Tensor ss = s.saved(t, width);
        Tensor dm = dmix.write(t, c);
        out.backwardOverwrite(dm, dy);
        // m_h = q_hᵀ s_h: dq_h = s_h dm_h, ds_h = q_h dm_hᵀ.
        Tensor gq = dq.write(t, c);
        apply(be, gq, ss, dm, t);
        Tensor gs = ds.write(t, width);
        outer(be, gs, sq, dm, t);
        Tensor gkv = dkv.zeros(t, width);
        ssm.backward(gkv, gs, skv, seqs.varlen());
        // kv_h = k′_h v_hᵀ: dk′_h = dkv_h v_h, dv_h = dkv_hᵀ k′_h.
        Tensor gkp = dkp.write(t, c);
        apply(be, gkp, gkv, sv, t);
        Tensor gv = dv.write(t, c);
        readout(be, gv, skp, gkv, t);
        Tensor gk = dk.zeros(t, c);
        be.causalConvBackward(gk, shift.grad(), gkp, sk, shift.value(), seqs.varlen());
        DiagonalSsm.skipBackward(be, gk, shiftD.grad(), gkp, sk, shiftD.value(), prod.write(t, c));
        q.backward(dx, gq);
        k.backward(dx, gk);
        v.backward(dx, gv);
    }

    @Override
    public MixerState newState(int sequences) {
        return new SsmState(dev, sequences, ssm.stateShape(), taps - 1, c);
    }

    @Override
    public void forwardStep(Tensor y, Tensor x, int[] cu, MixerState state) {
        SsmState st = (SsmState) state;
        int rows = x.rows();
        Backend be = y.device().backend();
        Tensor sq = stepQ.write(rows, c);
        Tensor sk = stepK.write(rows, c);
        Tensor sv = stepV.write(rows, c);
        Tensor skp = stepKp.write(rows, c);
        Tensor skv = stepKv.write(rows, width);
        Tensor ss = stepS.write(rows, width);
        Tensor m = stepMix.write(rows, c);
        q.apply(sq, x);
        k.apply(sk, x);
        v.apply(sv, x);
        int hist = taps - 1;
        for (int b = 0; b + 1 < cu.length; b++) {
            int n = cu[b + 1] - cu[b];
            if (n == 0) {
                continue;
            }
            // The shift SSM over [history; new keys]: its last n outputs are the new k′.
            Tensor window = stepWindow.write(hist + n, c);
            Tensor conv = stepConv.write(hist + n, c);
            be.copy(window.view(0, hist, c), st.history(b));
            be.copy(window.view(hist * c, n, c), sk.view(cu[b] * c, n, c));
            int[] windowCu = {0, hist + n};
            st.cu.copyFrom(windowCu);
            be.causalConvForward(conv, window, shift.value(), Varlen.of(st.cu, windowCu));
            be.copy(skp.view(cu[b] * c, n, c), conv.view(hist * c, n, c));
            be.copy(st.history(b), window.view(n * c, hist, c));
        }
        DiagonalSsm.skipForward(be, skp, sk, shiftD.value(), stepProd.write(rows, c));
        outer(be, skv, skp, sv, rows);
        for (int b = 0; b + 1 < cu.length; b++) {
            int n = cu[b + 1] - cu[b];
            if (n > 0) {
                ssm.step(ss.view(cu[b] * width, n, width), st.ssm(b), skv.view(cu[b] * width, n, width));
            }
        }
        readout(be, m, sq, ss, rows);
        out.apply(y, m);
    }

    @Override
    public void close() {
        acts.close();
        ssm.close();
    }
}
