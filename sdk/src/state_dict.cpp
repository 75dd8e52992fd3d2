#include "fusion/state_dict.hpp"

#include "fusion/error.hpp"

namespace fusion {
namespace {
std::string shape_str(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sizes();
  return out.str();
}
}  // namespace

void StateDict::set(const std::string& name, at::Tensor tensor) {
  auto it = index_.find(name);
  if (it != index_.end()) {
    items_[it->second].second = std::move(tensor);
    return;
  }
  index_.emplace(name, items_.size());
  items_.emplace_back(name, std::move(tensor));
}

bool StateDict::erase(const std::string& name) {
  auto it = index_.find(name);
  if (it == index_.end()) return false;
  const size_t pos = it->second;
  items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(pos));
  index_.erase(it);
  for (auto& [key, i] : index_) {
    if (i > pos) --i;
  }
  return true;
}

bool StateDict::contains(const std::string& name) const { return index_.count(name) != 0; }

const at::Tensor* StateDict::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &items_[it->second].second;
}

const at::Tensor& StateDict::at(const std::string& name) const {
  const at::Tensor* t = find(name);
  FUSION_ENSURE(t != nullptr, "no tensor named '", name, "' in the state dict");
  return *t;
}

at::Tensor& StateDict::at(const std::string& name) {
  return const_cast<at::Tensor&>(static_cast<const StateDict&>(*this).at(name));
}

std::vector<std::string> StateDict::keys() const {
  std::vector<std::string> out;
  out.reserve(items_.size());
  for (const auto& [k, v] : items_) out.push_back(k);
  return out;
}

int64_t StateDict::numel() const {
  int64_t n = 0;
  for (const auto& [k, v] : items_) n += v.numel();
  return n;
}

int64_t StateDict::nbytes() const {
  int64_t n = 0;
  for (const auto& [k, v] : items_) n += static_cast<int64_t>(v.nbytes());
  return n;
}

StateDict StateDict::to(const at::Device& device, std::optional<at::ScalarType> dtype) const {
  StateDict out;
  for (const auto& [k, v] : items_) {
    if (dtype && is_mergeable(v)) {
      out.set(k, v.to(device, *dtype));
    } else {
      out.set(k, v.to(device));
    }
  }
  return out;
}

StateDict StateDict::clone() const {
  StateDict out;
  for (const auto& [k, v] : items_) out.set(k, v.clone());
  return out;
}

StateDict StateDict::detach() const {
  StateDict out;
  for (const auto& [k, v] : items_) out.set(k, v.detach());
  return out;
}

void check_same_layout(const StateDict& reference, const StateDict& other,
                       const std::string& reference_name, const std::string& other_name) {
  for (const auto& [k, v] : reference) {
    const at::Tensor* o = other.find(k);
    FUSION_ENSURE(o != nullptr, other_name, " lacks key '", k, "' that ", reference_name, " has");
    FUSION_ENSURE(o->sizes() == v.sizes(), "key '", k, "': ", reference_name, " has shape ",
                  shape_str(v), " but ", other_name, " has shape ", shape_str(*o));
  }
  if (other.size() != reference.size()) {
    for (const auto& [k, v] : other) {
      FUSION_ENSURE(reference.contains(k), other_name, " has key '", k, "' that ", reference_name,
                    " lacks");
    }
  }
}

bool is_mergeable(const at::Tensor& t) { return at::isFloatingType(t.scalar_type()); }

namespace {
template <typename F>
StateDict zip(const StateDict& a, const StateDict& b, F f) {
  StateDict out;
  for (const auto& [k, v] : a) {
    const at::Tensor& w = b.at(k);
    out.set(k, is_mergeable(v) ? f(v, w) : v);
  }
  return out;
}
}  // namespace

StateDict subtract(const StateDict& a, const StateDict& b) {
  check_same_layout(a, b, "first operand", "second operand");
  return zip(a, b, [](const at::Tensor& x, const at::Tensor& y) { return x - y; });
}

StateDict add(const StateDict& a, const StateDict& b) {
  check_same_layout(a, b, "first operand", "second operand");
  return zip(a, b, [](const at::Tensor& x, const at::Tensor& y) { return x + y; });
}

StateDict scale(const StateDict& a, double s) {
  StateDict out;
  for (const auto& [k, v] : a) out.set(k, is_mergeable(v) ? v * s : v);
  return out;
}

void add_scaled_(StateDict& acc, const StateDict& x, double w) {
  check_same_layout(acc, x, "accumulator", "operand");
  for (const auto& [k, v] : acc) {
    if (is_mergeable(v)) const_cast<at::Tensor&>(v).add_(x.at(k), w);
  }
}

StateDict weighted_sum(const std::vector<const StateDict*>& xs, const std::vector<double>& weights) {
  FUSION_ENSURE(!xs.empty(), "weighted_sum: no state dicts");
  FUSION_ENSURE(xs.size() == weights.size(), "weighted_sum: ", xs.size(), " state dicts but ",
                weights.size(), " weights");
  StateDict out;
  for (const auto& [k, v] : *xs[0]) {
    out.set(k, is_mergeable(v) ? v * weights[0] : v.clone());
  }
  for (size_t i = 1; i < xs.size(); ++i) add_scaled_(out, *xs[i], weights[i]);
  return out;
}

}  // namespace fusion
