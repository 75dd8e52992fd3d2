#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fusion/export.hpp"

namespace fusion {

/// An ordered map from parameter name to tensor: the parameters of one model.
///
/// Order is insertion order and is preserved by every operation (it is the order a checkpoint is
/// written in). Tensors are shared, not copied, on insertion and lookup, as with at::Tensor itself;
/// the arithmetic below returns new tensors and never modifies its inputs. Not thread-safe for
/// concurrent mutation.
class FUSION_SDK_API StateDict {
 public:
  using Item = std::pair<std::string, at::Tensor>;

  StateDict() = default;

  /// Inserts or replaces `name`. A new name goes to the end; a replaced one keeps its place.
  void set(const std::string& name, at::Tensor tensor);
  /// Removes `name` if present; returns whether it was.
  bool erase(const std::string& name);
  bool contains(const std::string& name) const;
  /// The tensor stored under `name`; throws fusion::Error naming the key when absent.
  const at::Tensor& at(const std::string& name) const;
  at::Tensor& at(const std::string& name);
  /// nullptr when absent.
  const at::Tensor* find(const std::string& name) const;

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  std::vector<std::string> keys() const;
  const std::vector<Item>& items() const { return items_; }
  std::vector<Item>::const_iterator begin() const { return items_.begin(); }
  std::vector<Item>::const_iterator end() const { return items_.end(); }

  /// Total number of elements over all tensors.
  int64_t numel() const;
  /// Total bytes over all tensors.
  int64_t nbytes() const;

  /// A copy with every floating-point tensor moved to `device` and cast to `dtype` (when given);
  /// integer and bool tensors are moved but keep their dtype.
  StateDict to(const at::Device& device, std::optional<at::ScalarType> dtype = std::nullopt) const;
  /// A deep copy (every tensor cloned).
  StateDict clone() const;
  /// A copy whose tensors are detached from autograd.
  StateDict detach() const;

 private:
  std::vector<Item> items_;
  std::unordered_map<std::string, size_t> index_;
};

/// Throws fusion::Error unless `other` has exactly the keys of `reference` with the same shapes.
/// The message names the first offending key and both shapes, with `reference_name` and
/// `other_name` saying which model is which (e.g. "pretrained", "expert 'sun397'").
FUSION_SDK_API void check_same_layout(const StateDict& reference, const StateDict& other,
                                      const std::string& reference_name,
                                      const std::string& other_name);

/// True for the tensors a merge may combine (floating point); integer tensors such as position
/// ids are copied from the pretrained model instead.
FUSION_SDK_API bool is_mergeable(const at::Tensor& t);

/// a − b per key (the task vector when a is an expert and b the pretrained model). Non-mergeable
/// tensors are taken from `a`. Keys and shapes must agree (check_same_layout).
FUSION_SDK_API StateDict subtract(const StateDict& a, const StateDict& b);
/// a + b per key; non-mergeable tensors taken from `a`.
FUSION_SDK_API StateDict add(const StateDict& a, const StateDict& b);
/// s · a per key; non-mergeable tensors unchanged.
FUSION_SDK_API StateDict scale(const StateDict& a, double s);
/// In place: acc += w · x for every mergeable tensor (acc's tensors are modified).
FUSION_SDK_API void add_scaled_(StateDict& acc, const StateDict& x, double w);
/// Σᵢ wᵢ · xᵢ; non-mergeable tensors taken from the first. Requires at least one input.
FUSION_SDK_API StateDict weighted_sum(const std::vector<const StateDict*>& xs,
                                      const std::vector<double>& weights);

}  // namespace fusion
