// In-memory model and task pools of the test kit (fusion/testing/memory_pools.hpp).
#include "fusion/testing/memory_pools.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <limits>
#include <sstream>

#include "fusion/error.hpp"
#include "fusion/files.hpp"
#include "fusion/safetensors.hpp"

namespace fusion::testing {

namespace {

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "none" : out;
}

// Equal values, NaN matching NaN (same dtype, shape and device assumed).
bool same_values(const at::Tensor& a, const at::Tensor& b) {
  if (a.equal(b)) return true;
  if (!a.is_floating_point()) return false;
  at::Tensor an = a.isnan(), bn = b.isnan();
  if (!an.equal(bn)) return false;
  return a.masked_fill(an, 0).equal(b.masked_fill(bn, 0));
}

// "" when `now` is `before` (keys in order, dtype, shape, device, values, requires_grad off);
// otherwise what changed, naming the key.
std::string first_change(const StateDict& now, const StateDict& before) {
  if (now.keys() != before.keys()) {
    for (const auto& [k, t] : before)
      if (!now.contains(k)) return "key '" + k + "' was removed";
    for (const auto& [k, t] : now)
      if (!before.contains(k)) return "key '" + k + "' was added";
    return "its keys were reordered";
  }
  for (const auto& [k, was] : before) {
    const at::Tensor& t = now.at(k);
    std::ostringstream out;
    out << "key '" << k << "': ";
    if (!t.defined()) return out.str() + "the tensor was reset";
    if (t.scalar_type() != was.scalar_type()) {
      out << "dtype " << was.scalar_type() << " became " << t.scalar_type();
      return out.str();
    }
    if (t.sizes() != was.sizes()) {
      out << "shape " << was.sizes() << " became " << t.sizes();
      return out.str();
    }
    if (t.device() != was.device()) {
      out << "device " << was.device() << " became " << t.device();
      return out.str();
    }
    if (t.requires_grad()) return out.str() + "it now requires grad (requires_grad_ on a pool tensor)";
    if (!same_values(t, was)) {
      c10::NoGradGuard no_grad;
      const double diff = (t.to(at::kDouble) - was.to(at::kDouble)).abs().max().item<double>();
      out << "values differ (max abs difference " << diff << ")";
      return out.str();
    }
  }
  return "";
}

StateDict snapshot_of(const StateDict& params) {
  c10::NoGradGuard no_grad;
  StateDict out;
  for (const auto& [k, t] : params) out.set(k, t.detach().clone());
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// MemoryModelPool

MemoryModelPool::MemoryModelPool(ConstModelPtr pretrained,
                                 std::vector<std::pair<std::string, ConstModelPtr>> experts, at::Device device,
                                 at::ScalarType dtype)
    : pretrained_(std::move(pretrained)), experts_(std::move(experts)), device_(device), dtype_(dtype) {
  for (size_t i = 0; i < experts_.size(); ++i) {
    FUSION_ENSURE(experts_[i].second != nullptr, "MemoryModelPool: expert '", experts_[i].first, "' is null");
    for (size_t j = 0; j < i; ++j)
      FUSION_ENSURE(experts_[j].first != experts_[i].first, "MemoryModelPool: expert '", experts_[i].first,
                    "' is given twice");
  }
  if (pretrained_) snapshots_.push_back({"the pool's pretrained model", pretrained_.get(), snapshot_of(pretrained_->parameters())});
  for (const auto& [name, m] : experts_)
    snapshots_.push_back({"the pool's expert '" + name + "'", m.get(), snapshot_of(m->parameters())});
}

std::shared_ptr<MemoryModelPool> MemoryModelPool::from_state_dicts(
    std::optional<StateDict> pretrained, std::vector<std::pair<std::string, StateDict>> experts, at::Device device,
    at::ScalarType dtype) {
  ConstModelPtr pre;
  if (pretrained) pre = std::make_shared<Model>("checkpoint", std::move(*pretrained));
  std::vector<std::pair<std::string, ConstModelPtr>> ex;
  for (auto& [name, sd] : experts) ex.emplace_back(name, std::make_shared<Model>("checkpoint", std::move(sd)));
  return std::make_shared<MemoryModelPool>(std::move(pre), std::move(ex), device, dtype);
}

std::vector<std::string> MemoryModelPool::expert_names() const {
  std::vector<std::string> out;
  for (const auto& e : experts_) out.push_back(e.first);
  return out;
}

ConstModelPtr MemoryModelPool::pretrained() {
  ++pretrained_calls_;
  FUSION_ENSURE(pretrained_ != nullptr, "the model pool has no pretrained model");
  if (!handed_out_) {
    // A deep copy: a method that writes into it (a bug modification() reports) leaves the pool's
    // own model intact, so that later runs over the same models start from θ₀ again.
    handed_out_ = pretrained_->with_parameters(snapshot_of(pretrained_->parameters().to(device_, dtype_)));
    snapshots_.push_back({"the pretrained model handed out by pretrained()", handed_out_.get(),
                          snapshot_of(handed_out_->parameters())});
  }
  return handed_out_;
}

ModelPtr MemoryModelPool::load(const std::string& name) {
  int live = 1;
  for (const auto& w : lent_) live += w.expired() ? 0 : 1;
  max_live_ = std::max(max_live_, live);
  int64_t bytes = 0;
  for (const auto& [w, n] : lent_tensors_) bytes += w.expired() ? 0 : n;
  max_lent_bytes_ = std::max(max_lent_bytes_, bytes);
  ++loads_;
  for (const auto& [n, model] : experts_) {
    if (n != name) continue;
    ++loads_by_name_[name];
    StateDict copy;
    {
      c10::NoGradGuard no_grad;
      for (const auto& [k, t] : model->parameters().to(device_, dtype_)) copy.set(k, t.detach().clone());
    }
    ModelPtr m = model->with_parameters(std::move(copy));
    lent_.push_back(m);
    for (const auto& [k, t] : m->parameters())
      lent_tensors_.emplace_back(WeakTensor(t.getIntrusivePtr()), static_cast<int64_t>(t.nbytes()));
    return m;
  }
  FUSION_FAIL("unknown expert '", name, "' (experts: ", join(expert_names()), ")");
}

void MemoryModelPool::save(const Model& model, const std::filesystem::path& dir) const {
  ++saves_;
  write_directory_atomic(dir, [&](const std::filesystem::path& tmp) {
    save_safetensors(tmp / "model.safetensors", model.parameters());
    write_file_atomic(tmp / "config.json", model.config().dump(2) + "\n");
  });
}

int64_t MemoryModelPool::loads_of(const std::string& name) const {
  auto it = loads_by_name_.find(name);
  return it == loads_by_name_.end() ? 0 : it->second;
}

int64_t MemoryModelPool::expert_bytes() const {
  return experts_.empty() ? 0 : experts_.front().second->parameters().nbytes();
}

std::string MemoryModelPool::modification() const {
  // The handed-out pretrained model first (it was added last).
  for (auto it = snapshots_.rbegin(); it != snapshots_.rend(); ++it) {
    std::string change = first_change(it->model->parameters(), it->values);
    if (!change.empty()) return it->what + " changed: " + change;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// SyntheticTask

namespace {

/// Endless shuffled batches over a fixed split; reshuffled every epoch from its seed. Undefined
/// labels stay undefined (test batches).
class SplitStream : public BatchStream {
 public:
  SplitStream(at::Tensor x, at::Tensor y, int64_t batch, uint64_t seed, std::shared_ptr<int64_t> served,
              std::shared_ptr<int64_t> nan_after)
      : x_(std::move(x)),
        y_(std::move(y)),
        batch_(batch),
        gen_(at::make_generator<at::CPUGeneratorImpl>(seed)),
        served_(std::move(served)),
        nan_after_(std::move(nan_after)) {}

  Batch next() override {
    std::vector<at::Tensor> idx;
    int64_t need = batch_;
    while (need > 0) {
      if (pos_ >= perm_.numel()) {
        perm_ = at::randperm(x_.size(0), gen_);
        pos_ = 0;
      }
      const int64_t take = std::min(need, perm_.numel() - pos_);
      idx.push_back(perm_.narrow(0, pos_, take));
      pos_ += take;
      need -= take;
    }
    at::Tensor i = at::cat(idx).to(x_.device());
    Batch b{x_.index_select(0, i), y_.defined() ? y_.index_select(0, i) : at::Tensor()};
    if (*nan_after_ >= 0 && *served_ >= *nan_after_) b.inputs.fill_(std::numeric_limits<double>::quiet_NaN());
    ++*served_;
    return b;
  }

 private:
  at::Tensor x_, y_, perm_ = at::empty({0}, at::kLong);
  int64_t batch_, pos_ = 0;
  at::Generator gen_;
  std::shared_ptr<int64_t> served_, nan_after_;
};

}  // namespace

SyntheticTask::SyntheticTask(std::string name, SyntheticTaskOptions options)
    : name_(std::move(name)), options_(options) {
  const auto& o = options_;
  FUSION_ENSURE(o.classes >= 2, "task '", name_, "': classes must be at least 2, got ", o.classes);
  FUSION_ENSURE(o.input_dim >= 1 && o.feature_dim >= 1, "task '", name_, "': dimensions must be positive");
  FUSION_ENSURE(o.train_size >= 0 && o.test_size >= 1, "task '", name_,
                "': train_size must be ≥ 0 and test_size ≥ 1");
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  at::Tensor head = at::randn({o.classes, o.feature_dim}, g);
  at::Tensor mu = at::randn({o.classes, o.input_dim}, g) * o.spread;
  auto draw = [&](int64_t n) {
    at::Tensor y = at::randint(o.classes, {n}, g);
    at::Tensor x = mu.index_select(0, y) + o.noise * at::randn({n, o.input_dim}, g);
    return std::make_pair(x.to(o.device, o.dtype), y.to(o.device));
  };
  // The test split is drawn first, so that a task without a train split has the same test data.
  std::tie(test_x_, test_y_) = draw(o.test_size);
  if (o.train_size > 0) std::tie(train_x_, train_y_) = draw(o.train_size);
  head_ = head.to(o.device, o.dtype);
}

std::unique_ptr<BatchStream> SyntheticTask::train_stream(int64_t batch_size, uint64_t seed) {
  FUSION_ENSURE(has_train_split(), "task '", name_, "' has no train split");
  FUSION_ENSURE(batch_size >= 1, "task '", name_, "': batch size must be positive, got ", batch_size);
  return std::make_unique<SplitStream>(train_x_, train_y_, batch_size, seed, served_, nan_after_);
}

std::unique_ptr<BatchStream> SyntheticTask::test_stream(int64_t batch_size, uint64_t seed) {
  FUSION_ENSURE(batch_size >= 1, "task '", name_, "': batch size must be positive, got ", batch_size);
  return std::make_unique<SplitStream>(test_x_, at::Tensor(), batch_size, seed, test_served_,
                                       std::make_shared<int64_t>(-1));
}

at::Tensor SyntheticTask::logits(const Model& model, const StateDict& params, const at::Tensor& inputs) const {
  at::Tensor features = model.forward(params, inputs);
  FUSION_ENSURE(features.dim() == 2 && features.size(1) == options_.feature_dim, "task '", name_,
                "': the model's features are ", features.sizes(), ", the head expects [N, ",
                options_.feature_dim, "]");
  return at::matmul(features, head_.to(features.scalar_type()).t());
}

nlohmann::json SyntheticTask::evaluate(const Model& model) {
  ++evaluations_;
  c10::NoGradGuard no_grad;
  at::Tensor lg = logits(model, model.parameters(), test_x_).to(at::kDouble);
  const double accuracy = lg.argmax(1).eq(test_y_).to(at::kDouble).mean().item<double>();
  const double loss = at::cross_entropy_loss(lg, test_y_).item<double>();
  return {{"accuracy", accuracy}, {"loss", loss}};
}

// ---------------------------------------------------------------------------------------------
// MemoryTaskPool

Task& MemoryTaskPool::add(std::unique_ptr<Task> task) {
  FUSION_ENSURE(task != nullptr, "MemoryTaskPool: null task");
  const std::string name = task->name();
  for (const auto& t : tasks_) FUSION_ENSURE(t->name() != name, "MemoryTaskPool: task '", name, "' is given twice");
  tasks_.push_back(std::move(task));
  return *tasks_.back();
}

SyntheticTask& MemoryTaskPool::add_synthetic(const std::string& name, const SyntheticTaskOptions& options) {
  return static_cast<SyntheticTask&>(add(std::make_unique<SyntheticTask>(name, options)));
}

std::vector<std::string> MemoryTaskPool::task_names() const {
  std::vector<std::string> out;
  for (const auto& t : tasks_) out.push_back(t->name());
  return out;
}

Task& MemoryTaskPool::task(const std::string& name) {
  for (auto& t : tasks_)
    if (t->name() == name) return *t;
  FUSION_FAIL("unknown task '", name, "' (tasks: ", join(task_names()), ")");
}

}  // namespace fusion::testing
