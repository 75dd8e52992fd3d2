#include "fusion/gpt2/model.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <unordered_set>

#include "fusion/error.hpp"

namespace fusion::gpt2 {
namespace {

const std::string kPrefix = "transformer.";

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

// Keys of a bare GPT2Model file: those that get the `transformer.` prefix.
bool is_bare_body_key(const std::string& k) {
  return starts_with(k, "wte.") || starts_with(k, "wpe.") || starts_with(k, "h.") || starts_with(k, "ln_f.");
}

// The attention buffers (causal triangle, masked value) that checkpoints written before transformers
// 4.x kept in the state dict: `….attn.bias` (not `….attn.c_attn.bias`) and `….attn.masked_bias`.
bool is_attention_buffer(const std::string& k) {
  return ends_with(k, ".attn.bias") || ends_with(k, ".attn.masked_bias");
}

// The dtype's most negative finite value (torch.finfo(dtype).min), which transformers' GPT-2 uses as
// the masked score.
double lowest(at::ScalarType t) {
  double v = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "gpt2_lowest",
                                  [&] { v = static_cast<double>(std::numeric_limits<scalar_t>::lowest()); });
  return v;
}

// Conv1D: y = x·W + b with W [in, out] (transformers' pytorch_utils.Conv1D, an addmm over the rows),
// in W's dtype: x and b are cast to it when theirs differs (mixed precision).
at::Tensor conv1d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  std::vector<int64_t> out(x.sizes().begin(), x.sizes().end());
  out.back() = w.size(1);
  const at::ScalarType t = w.scalar_type();
  const at::Tensor xt = x.scalar_type() == t ? x : x.to(t);
  const at::Tensor bt = b.scalar_type() == t ? b : b.to(t);
  return at::addmm(bt, xt.reshape({-1, xt.size(-1)}), w).view(out);
}

bool is_reduced_float(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

// layer_norm of x in x's dtype; the weights are cast to it when theirs differs (16-bit weights
// normalising the float32 residual stream).
at::Tensor norm(const at::Tensor& x, int64_t d, const at::Tensor& w, const at::Tensor& b, double eps) {
  if (w.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type())
    return at::layer_norm(x, {d}, w, b, eps);
  return at::layer_norm(x, {d}, w.to(x.scalar_type()), b.to(x.scalar_type()), eps);
}

// hidden·wᵀ, a head (lm_head, score): in w's dtype, the result in hidden's.
at::Tensor head_linear(const at::Tensor& hidden, const at::Tensor& w) {
  if (w.scalar_type() == hidden.scalar_type()) return at::linear(hidden, w);
  return at::linear(hidden.to(w.scalar_type()), w).to(hidden.scalar_type());
}

at::Tensor activation(const at::Tensor& x, const std::string& act) {
  const bool grad = at::GradMode::is_enabled();
  if (act == "gelu_new" || act == "gelu_fast") {
    // gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)));
    // gelu_fast: 0.5·x·(1 + tanh(x·0.7978845608·(1 + 0.044715·x²))).
    at::Tensor inner;
    if (act == "gelu_new") {
      const double c = std::sqrt(2.0 / M_PI);
      inner = grad ? (x + at::pow(x, 3.0) * 0.044715) * c : at::pow(x, 3.0).mul_(0.044715).add_(x).mul_(c);
    } else {
      inner = grad ? x * 0.7978845608 * (x * x * 0.044715 + 1.0)
                   : at::mul(x, 0.7978845608).mul_(at::mul(x, x).mul_(0.044715).add_(1.0));
    }
    if (grad) return x * 0.5 * (at::tanh(inner) + 1.0);
    return inner.tanh_().add_(1.0).mul_(x).mul_(0.5);
  }
  if (act == "gelu_pytorch_tanh") return at::gelu(x, "tanh");
  if (act == "gelu") return at::gelu(x);
  if (act == "quick_gelu") return x * at::sigmoid(x * 1.702);
  if (act == "relu") return at::relu(x);
  if (act == "silu" || act == "swish") return at::silu(x);
  if (act == "tanh") return at::tanh(x);
  FUSION_FAIL("gpt2: unknown activation_function '", act, "'");
}

}  // namespace

const char* architecture_name(Gpt2Head head) {
  switch (head) {
    case Gpt2Head::kLanguageModel: return "gpt2_lm";
    case Gpt2Head::kSequenceClassification: return "gpt2_sequence_classification";
    case Gpt2Head::kNone: break;
  }
  return "gpt2";
}

const char* hf_class_name(Gpt2Head head) {
  switch (head) {
    case Gpt2Head::kLanguageModel: return "GPT2LMHeadModel";
    case Gpt2Head::kSequenceClassification: return "GPT2ForSequenceClassification";
    case Gpt2Head::kNone: break;
  }
  return "GPT2Model";
}

Gpt2Head head_of(const Gpt2Config& config) {
  if (config.architecture == "GPT2ForSequenceClassification") return Gpt2Head::kSequenceClassification;
  if (config.architecture == "GPT2LMHeadModel" || config.architecture == "GPT2DoubleHeadsModel") {
    return Gpt2Head::kLanguageModel;
  }
  return Gpt2Head::kNone;
}

const std::string& body_prefix() { return kPrefix; }

Gpt2Keys::Gpt2Keys(int64_t n_layer)
    : wte(kPrefix + "wte.weight"),
      wpe(kPrefix + "wpe.weight"),
      lnf_w(kPrefix + "ln_f.weight"),
      lnf_b(kPrefix + "ln_f.bias"),
      lm_head("lm_head.weight"),
      score("score.weight") {
  for (int64_t i = 0; i < n_layer; ++i) {
    const std::string p = kPrefix + "h." + std::to_string(i) + ".";
    BlockKeys k;
    k.ln1_w = p + "ln_1.weight";
    k.ln1_b = p + "ln_1.bias";
    k.attn_w = p + "attn.c_attn.weight";
    k.attn_b = p + "attn.c_attn.bias";
    k.attn_proj_w = p + "attn.c_proj.weight";
    k.attn_proj_b = p + "attn.c_proj.bias";
    k.ln2_w = p + "ln_2.weight";
    k.ln2_b = p + "ln_2.bias";
    k.fc_w = p + "mlp.c_fc.weight";
    k.fc_b = p + "mlp.c_fc.bias";
    k.mlp_proj_w = p + "mlp.c_proj.weight";
    k.mlp_proj_b = p + "mlp.c_proj.bias";
    blocks.push_back(std::move(k));
  }
}

StateDict canonical_keys(const StateDict& params) {
  StateDict out;
  for (const auto& [key, t] : params) {
    if (is_attention_buffer(key)) continue;
    out.set(is_bare_body_key(key) ? kPrefix + key : key, t);
  }
  return out;
}

std::vector<ExpectedTensor> Gpt2Model::expected_parameters(const Gpt2Config& c, Gpt2Head head) {
  const int64_t d = c.n_embd, inner = c.inner_dim();
  const Gpt2Keys keys(c.n_layer);
  std::vector<ExpectedTensor> e;
  e.push_back({keys.wte, {c.vocab_size, d}});
  e.push_back({keys.wpe, {c.n_positions, d}});
  for (const BlockKeys& k : keys.blocks) {
    e.push_back({k.ln1_w, {d}});
    e.push_back({k.ln1_b, {d}});
    e.push_back({k.attn_w, {d, 3 * d}});
    e.push_back({k.attn_b, {3 * d}});
    e.push_back({k.attn_proj_w, {d, d}});
    e.push_back({k.attn_proj_b, {d}});
    e.push_back({k.ln2_w, {d}});
    e.push_back({k.ln2_b, {d}});
    e.push_back({k.fc_w, {d, inner}});
    e.push_back({k.fc_b, {inner}});
    e.push_back({k.mlp_proj_w, {inner, d}});
    e.push_back({k.mlp_proj_b, {d}});
  }
  e.push_back({keys.lnf_w, {d}});
  e.push_back({keys.lnf_b, {d}});
  if (head == Gpt2Head::kSequenceClassification) e.push_back({keys.score, {c.num_labels, d}});
  return e;
}

StateDict Gpt2Model::random_parameters(const Gpt2Config& c, Gpt2Head head, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  StateDict p;
  for (const auto& [key, shape] : expected_parameters(c, head)) {
    at::Tensor t = at::empty(shape, at::kFloat);
    const bool norm = key.find(".ln_") != std::string::npos;
    if (norm && ends_with(key, ".weight")) {
      t.fill_(1.0);
    } else if (ends_with(key, ".bias")) {
      t.zero_();
    } else {
      t.normal_(0.0, 0.02, gen);
    }
    p.set(key, t);
  }
  return p;
}

Gpt2Model::Gpt2Model(StateDict params, const nlohmann::json& config, Gpt2Head head, const std::string& origin)
    : Model(architecture_name(head), StateDict(), config),
      cfg_(Gpt2Config::from_json(config, origin + ": config.json")),
      head_(head),
      keys_(cfg_.n_layer) {
  StateDict canon = canonical_keys(params);
  params = StateDict();
  const std::vector<ExpectedTensor> expected = expected_parameters(cfg_, head_);
  std::unordered_set<std::string> known;
  StateDict ordered;
  for (const auto& [key, shape] : expected) {
    const at::Tensor* t = canon.find(key);
    FUSION_ENSURE(t != nullptr, origin, ": the weights lack '", key, "' (shape ", shape_str(shape),
                  " by config.json)");
    FUSION_ENSURE(t->sizes() == at::IntArrayRef(shape), origin, ": '", key, "' has shape ", shape_str(t->sizes()),
                  " but config.json implies ", shape_str(shape));
    FUSION_ENSURE(t->is_floating_point(), origin, ": '", key, "' must be floating point, got ", t->scalar_type());
    known.insert(key);
    ordered.set(key, *t);
  }
  for (const auto& [key, t] : canon) {
    if (known.count(key) != 0) continue;
    FUSION_ENSURE(!starts_with(key, kPrefix), origin, ": the weights have '", key, "' (shape ", shape_str(t.sizes()),
                  ") that config.json does not describe (n_layer ", cfg_.n_layer, ")");
    if (key == keys_.lm_head && head_ == Gpt2Head::kLanguageModel) {
      const std::vector<int64_t> want{cfg_.vocab_size, cfg_.n_embd};
      FUSION_ENSURE(t.sizes() == at::IntArrayRef(want), origin, ": '", key, "' has shape ", shape_str(t.sizes()),
                    " but config.json implies ", shape_str(want));
      FUSION_ENSURE(t.is_floating_point(), origin, ": '", key, "' must be floating point, got ", t.scalar_type());
      ordered.set(key, t);
      continue;
    }
    // The body of a head model drops the head; a head model ignores the other head's weight, as
    // transformers does (GPT2ForSequenceClassification files may carry lm_head.weight).
    if (head_ == Gpt2Head::kNone || key == keys_.lm_head || key == keys_.score) continue;
    FUSION_FAIL(origin, ": the weights have '", key, "' (shape ", shape_str(t.sizes()), ") that a ",
                hf_class_name(head_), " does not have");
  }
  parameters_ = std::move(ordered);
}

Gpt2Model::~Gpt2Model() = default;

bool Gpt2Model::tied_lm_head() const {
  return head_ == Gpt2Head::kLanguageModel && !parameters_.contains(keys_.lm_head);
}

at::Tensor Gpt2Model::forward(const StateDict& params, const at::Tensor& input_ids) const {
  return forward(params, input_ids, at::Tensor());
}

at::Tensor Gpt2Model::hidden_states(const StateDict& params, const at::Tensor& input_ids,
                                    const at::Tensor& attention_mask) const {
  return gpt2_hidden_states(params, cfg_, keys_, input_ids, attention_mask);
}

at::Tensor Gpt2Model::forward(const StateDict& params, const at::Tensor& input_ids,
                              const at::Tensor& attention_mask) const {
  at::Tensor hidden = gpt2_hidden_states(params, cfg_, keys_, input_ids, attention_mask);
  switch (head_) {
    case Gpt2Head::kNone:
      return hidden;
    case Gpt2Head::kLanguageModel: {
      const at::Tensor* w = params.find(keys_.lm_head);
      return head_linear(hidden, w != nullptr ? *w : params.at(keys_.wte));
    }
    case Gpt2Head::kSequenceClassification:
      return head_linear(pool_last_token(hidden, input_ids, cfg_.pad_token_id), params.at(keys_.score));
  }
  return hidden;
}

std::shared_ptr<Model> Gpt2Model::with_parameters(StateDict parameters) const {
  check_same_layout(parameters_, parameters, "model", "new parameters");
  return std::make_shared<Gpt2Model>(std::move(parameters), config_, head_, "new parameters");
}

at::Tensor gpt2_hidden_states(const StateDict& p, const Gpt2Config& c, const Gpt2Keys& keys,
                              const at::Tensor& input_ids, const at::Tensor& attention_mask) {
  FUSION_ENSURE(input_ids.defined() && input_ids.dim() == 2, "gpt2: input_ids must be [batch, tokens], got ",
                input_ids.defined() ? shape_str(input_ids.sizes()) : std::string("none"));
  FUSION_ENSURE(at::isIntegralType(input_ids.scalar_type(), /*includeBool=*/false),
                "gpt2: input_ids must hold integer token ids, got ", input_ids.scalar_type());
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  FUSION_ENSURE(t >= 1, "gpt2: input_ids has no tokens");
  FUSION_ENSURE(t <= c.n_positions, "gpt2: input_ids has ", t, " tokens per row but n_positions is ", c.n_positions,
                " (truncate the input to at most ", c.n_positions, " tokens)");
  const at::Tensor& wte = p.at(keys.wte);
  const at::Tensor ids = input_ids.to(wte.device(), at::kLong);
  if (b > 0) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    FUSION_ENSURE(lo >= 0 && hi < c.vocab_size, "gpt2: input_ids holds token id ", lo < 0 ? lo : hi,
                  ", outside the vocabulary [0, ", c.vocab_size, ")");
  }
  // Mixed precision (PyTorch autocast's policy, as families/clip): with 16-bit Conv1D weights the
  // Conv1D layers and the attention products run in that dtype; the residual stream, the layer norms,
  // the masking and the softmax in float32, and the output is float32.
  const at::ScalarType gemm = keys.blocks.empty() ? wte.scalar_type() : p.at(keys.blocks.front().attn_w).scalar_type();
  const bool mixed = is_reduced_float(gemm);
  const at::ScalarType dtype = mixed ? at::kFloat : wte.scalar_type();
  const double fmin = lowest(dtype);
  // (1 − attention_mask)·finfo.min, broadcast over heads and queries: [B, 1, 1, T].
  at::Tensor mask_add;
  if (attention_mask.defined()) {
    FUSION_ENSURE(attention_mask.sizes() == input_ids.sizes(), "gpt2: attention_mask must have input_ids' shape ",
                  shape_str(input_ids.sizes()), ", got ", shape_str(attention_mask.sizes()));
    mask_add = at::rsub(attention_mask.to(wte.device(), dtype), 1.0).mul_(fmin).view({b, 1, 1, t});
  }
  // True above the diagonal: the future keys a query must not see.
  const at::Tensor future = at::ones({t, t}, wte.options().dtype(at::kBool)).triu_(1);
  const int64_t d = c.n_embd, h = c.n_head, hd = c.head_dim();
  const double scale = std::sqrt(static_cast<double>(hd));
  const bool grad = at::GradMode::is_enabled();

  at::Tensor x = mixed ? at::embedding(wte, ids).to(dtype) + p.at(keys.wpe).narrow(0, 0, t).to(dtype)
                       : at::embedding(wte, ids) + p.at(keys.wpe).narrow(0, 0, t);
  for (size_t l = 0; l < keys.blocks.size(); ++l) {
    const BlockKeys& k = keys.blocks[l];
    // Attention: x + c_proj(softmax(mask(q kᵀ / √d_h)) v).
    at::Tensor y = norm(x, d, p.at(k.ln1_w), p.at(k.ln1_b), c.layer_norm_epsilon);
    std::vector<at::Tensor> qkv = conv1d(y, p.at(k.attn_w), p.at(k.attn_b)).split(d, 2);
    at::Tensor q = qkv[0].view({b, t, h, hd}).permute({0, 2, 1, 3});
    at::Tensor kk = qkv[1].view({b, t, h, hd}).permute({0, 2, 1, 3});
    at::Tensor v = qkv[2].view({b, t, h, hd}).permute({0, 2, 1, 3});
    // In place on matmul's output: its backward needs only q and k.
    at::Tensor scores = at::matmul(q, kk.transpose(-1, -2));
    if (mixed) scores = scores.to(dtype);
    if (c.scale_attn_weights) scores.div_(scale);
    if (c.scale_attn_by_inverse_layer_idx) scores.div_(static_cast<double>(l + 1));
    scores.masked_fill_(future, fmin);
    if (mask_add.defined()) scores.add_(mask_add);
    at::Tensor probs = mixed ? at::softmax(scores, -1).to(gemm) : at::softmax(scores, -1);
    at::Tensor ctx = at::matmul(probs, v).permute({0, 2, 1, 3}).reshape({b, t, d});
    at::Tensor attn = conv1d(ctx, p.at(k.attn_proj_w), p.at(k.attn_proj_b));
    if (grad) x = x + attn; else x.add_(attn);
    // MLP: x + c_proj(act(c_fc(ln_2(x)))).
    y = norm(x, d, p.at(k.ln2_w), p.at(k.ln2_b), c.layer_norm_epsilon);
    y = activation(conv1d(y, p.at(k.fc_w), p.at(k.fc_b)), c.activation_function);
    y = conv1d(y, p.at(k.mlp_proj_w), p.at(k.mlp_proj_b));
    if (grad) x = x + y; else x.add_(y);
  }
  return norm(x, d, p.at(keys.lnf_w), p.at(keys.lnf_b), c.layer_norm_epsilon);
}

at::Tensor sequence_pool_index(const at::Tensor& input_ids, std::optional<int64_t> pad_token_id) {
  FUSION_ENSURE(input_ids.defined() && input_ids.dim() == 2 && input_ids.size(1) >= 1,
                "gpt2: input_ids must be [batch, tokens] with at least one token");
  const int64_t t = input_ids.size(1);
  if (!pad_token_id) return at::full({input_ids.size(0)}, t - 1, input_ids.options().dtype(at::kLong));
  at::Tensor first_pad = input_ids.eq(*pad_token_id).to(at::kInt).argmax(-1);
  return (first_pad - 1).remainder(t).to(at::kLong);
}

at::Tensor pool_last_token(const at::Tensor& hidden, const at::Tensor& input_ids,
                           std::optional<int64_t> pad_token_id) {
  FUSION_ENSURE(hidden.dim() == 3 && hidden.size(0) == input_ids.size(0) && hidden.size(1) == input_ids.size(1),
                "gpt2: hidden states ", shape_str(hidden.sizes()), " do not match input_ids ",
                shape_str(input_ids.sizes()));
  at::Tensor idx = sequence_pool_index(input_ids, pad_token_id).to(hidden.device());
  const int64_t t = hidden.size(1);
  at::Tensor flat = at::arange(hidden.size(0), idx.options()).mul_(t).add_(idx);
  return hidden.reshape({-1, hidden.size(2)}).index_select(0, flat);
}

}  // namespace fusion::gpt2
