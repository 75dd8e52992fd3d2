#include "fusion/clip/encoder.hpp"

#include <ATen/core/grad_mode.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "fusion/error.hpp"
#include "mixed_precision.hpp"

namespace fusion::clip {
namespace {

std::string shape_str(at::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

}  // namespace

std::vector<LayerKeys> encoder_keys(const std::string& prefix, const EncoderConfig& cfg) {
  std::vector<LayerKeys> keys;
  keys.reserve(cfg.num_hidden_layers);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string p = prefix + "layers." + std::to_string(l) + ".";
    LayerKeys k;
    k.ln1_w = p + "layer_norm1.weight";
    k.ln1_b = p + "layer_norm1.bias";
    k.q_w = p + "self_attn.q_proj.weight";
    k.q_b = p + "self_attn.q_proj.bias";
    k.k_w = p + "self_attn.k_proj.weight";
    k.k_b = p + "self_attn.k_proj.bias";
    k.v_w = p + "self_attn.v_proj.weight";
    k.v_b = p + "self_attn.v_proj.bias";
    k.o_w = p + "self_attn.out_proj.weight";
    k.o_b = p + "self_attn.out_proj.bias";
    k.ln2_w = p + "layer_norm2.weight";
    k.ln2_b = p + "layer_norm2.bias";
    k.fc1_w = p + "mlp.fc1.weight";
    k.fc1_b = p + "mlp.fc1.bias";
    k.fc2_w = p + "mlp.fc2.weight";
    k.fc2_b = p + "mlp.fc2.bias";
    keys.push_back(std::move(k));
  }
  return keys;
}

void append_encoder_shapes(std::vector<ExpectedTensor>& out, const std::string& prefix,
                           const EncoderConfig& cfg) {
  const int64_t d = cfg.hidden_size, i = cfg.intermediate_size;
  for (const LayerKeys& k : encoder_keys(prefix, cfg)) {
    out.push_back({k.ln1_w, {d}});
    out.push_back({k.ln1_b, {d}});
    for (const auto* w : {&k.k_w, &k.v_w, &k.q_w, &k.o_w}) out.push_back({*w, {d, d}});
    for (const auto* b : {&k.k_b, &k.v_b, &k.q_b, &k.o_b}) out.push_back({*b, {d}});
    out.push_back({k.ln2_w, {d}});
    out.push_back({k.ln2_b, {d}});
    out.push_back({k.fc1_w, {i, d}});
    out.push_back({k.fc1_b, {i}});
    out.push_back({k.fc2_w, {d, i}});
    out.push_back({k.fc2_b, {d}});
  }
}

void check_params(const StateDict& params, const std::vector<ExpectedTensor>& expected,
                  const std::string& prefix) {
  for (const auto& [key, shape] : expected) {
    const at::Tensor* t = params.find(key);
    FUSION_ENSURE(t != nullptr, "the weights lack '", key, "' (shape ", shape_str(shape),
                  " by config.json)");
    FUSION_ENSURE(t->sizes() == at::IntArrayRef(shape), "'", key, "': config.json says shape ",
                  shape_str(shape), " but the weights have ", shape_str(t->sizes()));
    FUSION_ENSURE(t->is_floating_point(), "'", key, "' must be floating point, got ", t->scalar_type());
  }
  if (params.size() == expected.size()) return;
  // Extra keys: the position_ids buffers are fine; anything else means config and weights disagree.
  std::vector<std::string> known;
  for (const auto& e : expected) known.push_back(e.first);
  for (const auto& [key, t] : params) {
    if (!starts_with(key, prefix) || ends_with(key, "position_ids")) continue;
    bool found = false;
    for (const auto& e : expected) {
      if (e.first == key) { found = true; break; }
    }
    FUSION_ENSURE(found, "the weights have '", key, "' (shape ", shape_str(t.sizes()),
                  ") that config.json does not describe (num_hidden_layers?)");
  }
}

at::Tensor activation(const at::Tensor& x, const std::string& act) {
  if (act == "gelu") return at::gelu(x);
  // quick_gelu: x · σ(1.702 x).
  if (at::GradMode::is_enabled()) return x * at::sigmoid(x * 1.702);
  at::Tensor s = at::mul(x, 1.702);
  s.sigmoid_();
  s.mul_(x);
  return s;
}

at::Tensor encoder_forward(const StateDict& p, const std::vector<LayerKeys>& keys,
                           const EncoderConfig& cfg, at::Tensor x, bool causal, bool first_token_only) {
  const int64_t b = x.size(0), t = x.size(1), d = cfg.hidden_size;
  const int64_t h = cfg.num_attention_heads, hd = cfg.head_dim();
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const bool grad = at::GradMode::is_enabled();
  // Mixed precision (mixed_precision.hpp): 16-bit GEMM weights, the residual stream in float32.
  const bool mixed = !keys.empty() && detail::is_reduced_float(p.at(keys.front().q_w).scalar_type());
  if (mixed && x.scalar_type() != at::kFloat) x = x.to(at::kFloat);
  const at::ScalarType gemm = keys.empty() ? x.scalar_type() : p.at(keys.front().q_w).scalar_type();
  const bool low_precision = detail::is_reduced_float(gemm);
  using detail::linear;
  using detail::norm;
  at::Tensor mask;
  if (causal) {
    mask = at::full({t, t}, -std::numeric_limits<double>::infinity(), x.options().dtype(gemm)).triu_(1);
  }
  for (size_t l = 0; l < keys.size(); ++l) {
    const LayerKeys& k = keys[l];
    // Self-attention block: x + out_proj(softmax(q kᵀ / √d_h + mask) v).
    at::Tensor y = norm(x, d, p.at(k.ln1_w), p.at(k.ln1_b), cfg.layer_norm_eps);
    if (mixed) y = y.to(gemm);  // once for q, k and v
    // The last layer of a first-token-only pass needs the query (and all after it) of token 0 only.
    const bool narrow = first_token_only && l + 1 == keys.size();
    const int64_t tq = narrow ? 1 : t;
    if (narrow) x = x.narrow(1, 0, 1);
    at::Tensor yq = narrow ? y.narrow(1, 0, 1) : y;
    at::Tensor q = linear(yq, p.at(k.q_w), p.at(k.q_b)).view({b, tq, h, hd}).transpose(1, 2);
    at::Tensor kk = linear(y, p.at(k.k_w), p.at(k.k_b)).view({b, t, h, hd}).transpose(1, 2);
    at::Tensor v = linear(y, p.at(k.v_w), p.at(k.v_b)).view({b, t, h, hd}).transpose(1, 2);
    at::Tensor scores = at::matmul(q, kk.transpose(-1, -2));
    scores.mul_(scale);  // in place on matmul's output: autograd needs only q and k
    if (causal) scores.add_(mask);
    at::Tensor probs = low_precision ? at::softmax(scores, -1, at::kFloat).to(gemm) : at::softmax(scores, -1);
    at::Tensor ctx = at::matmul(probs, v).transpose(1, 2).reshape({b, tq, d});
    at::Tensor attn = linear(ctx, p.at(k.o_w), p.at(k.o_b));
    if (grad || narrow) x = x + attn; else x.add_(attn);
    // MLP block: x + fc2(act(fc1(layer_norm2(x)))).
    y = norm(x, d, p.at(k.ln2_w), p.at(k.ln2_b), cfg.layer_norm_eps);
    y = activation(linear(y, p.at(k.fc1_w), p.at(k.fc1_b)), cfg.hidden_act);
    y = linear(y, p.at(k.fc2_w), p.at(k.fc2_b));
    if (grad) x = x + y; else x.add_(y);
  }
  if (first_token_only && keys.empty()) x = x.narrow(1, 0, 1);
  return x;
}

}  // namespace fusion::clip
