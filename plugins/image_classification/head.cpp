#include "head.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "fusion/error.hpp"
#include "fusion/safetensors.hpp"
#include "fusion/state_dict.hpp"

namespace fusion::image_classification {
namespace fs = std::filesystem;

namespace {

const TensorInfo& require(const SafetensorsFile& file, const std::string& key) {
  const TensorInfo* info = file.find(key);
  FUSION_ENSURE(info != nullptr, "head file '", file.path().string(), "': no tensor '", key,
                "' (a head holds projection, text_embeds and logit_scale)");
  return *info;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

struct Fnv1a {
  uint64_t h = 0xcbf29ce484222325ull;
  void bytes(const void* p, size_t n) {
    const auto* c = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= c[i];
      h *= 0x100000001b3ull;
    }
  }
  // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
  void str(const std::string& s) {
    const uint64_t n = s.size();
    bytes(&n, sizeof n);
    bytes(s.data(), s.size());
  }
  void num(int64_t v) { bytes(&v, sizeof v); }
};

}  // namespace

int64_t head_file_classes(const fs::path& path) {
  SafetensorsFile file(path);
  const TensorInfo& t = require(file, "text_embeds");
  FUSION_ENSURE(t.shape.size() == 2, "head file '", path.string(), "': text_embeds has shape ",
                shape_text(t.shape), ", expected [num_classes, proj_dim]");
  return t.shape[0];
}

clip::ZeroShotHead load_head(const fs::path& path, const at::Device& device, at::ScalarType dtype) {
  SafetensorsFile file(path);
  const TensorInfo& p = require(file, "projection");
  const TensorInfo& t = require(file, "text_embeds");
  const TensorInfo& s = require(file, "logit_scale");
  const std::string where = "head file '" + path.string() + "'";
  FUSION_ENSURE(p.shape.size() == 2, where, ": projection has shape ", shape_text(p.shape),
                ", expected [proj_dim, hidden]");
  FUSION_ENSURE(t.shape.size() == 2, where, ": text_embeds has shape ", shape_text(t.shape),
                ", expected [num_classes, proj_dim]");
  FUSION_ENSURE(t.shape[1] == p.shape[0], where, ": text_embeds ", shape_text(t.shape),
                " and projection ", shape_text(p.shape), " disagree on proj_dim");
  FUSION_ENSURE(t.shape[0] > 0, where, ": text_embeds has no classes");
  int64_t scale_numel = 1;
  for (int64_t d : s.shape) scale_numel *= d;
  FUSION_ENSURE(scale_numel == 1, where, ": logit_scale has shape ", shape_text(s.shape),
                ", expected a scalar");
  clip::ZeroShotHead head;
  for (const char* key : {"projection", "text_embeds", "logit_scale"}) {
    FUSION_ENSURE(at::isFloatingType(torch_dtype(file.find(key)->dtype)), where, ": ", key,
                  " has dtype ", file.find(key)->dtype, ", expected a float type");
  }
  head.projection = file.tensor("projection").to(device, dtype);
  head.text_embeds = file.tensor("text_embeds").to(device, dtype);
  head.logit_scale = file.tensor("logit_scale").to(at::kDouble).reshape({}).item<double>();
  FUSION_ENSURE(head.logit_scale > 0 && std::isfinite(head.logit_scale), where, ": logit_scale is ",
                head.logit_scale, ", expected a positive multiplier (exp of CLIP's logit_scale, about 100)");
  return head;
}

void save_head(const fs::path& path, const clip::ZeroShotHead& head,
               const std::map<std::string, std::string>& metadata) {
  StateDict sd;
  sd.set("projection", head.projection.detach().to(at::kCPU, at::kFloat).contiguous());
  sd.set("text_embeds", head.text_embeds.detach().to(at::kCPU, at::kFloat).contiguous());
  sd.set("logit_scale", at::scalar_tensor(head.logit_scale, at::kFloat));
  save_safetensors(path, sd, metadata);
}

std::string head_cache_key(const fs::path& clip_dir, const std::vector<std::string>& classnames,
                           const std::vector<std::string>& templates) {
  Fnv1a h;
  h.str("fusion zero-shot head v1");
  std::error_code ec;
  const fs::path dir = fs::absolute(clip_dir, ec).lexically_normal();
  h.str(dir.string());
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".safetensors" || ext == ".json" || name == "merges.txt"))
      files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    h.str(f.filename().string());
    h.num(static_cast<int64_t>(fs::file_size(f, ec)));
    h.num(static_cast<int64_t>(fs::last_write_time(f, ec).time_since_epoch().count()));
  }
  h.num(static_cast<int64_t>(classnames.size()));
  for (const auto& c : classnames) h.str(c);
  h.num(static_cast<int64_t>(templates.size()));
  for (const auto& t : templates) h.str(t);
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h.h));
  return buf;
}

fs::path default_head_cache_dir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return fs::path(x) / "fusion" / "zero_shot_heads";
  if (const char* home = std::getenv("HOME"); home && *home)
    return fs::path(home) / ".cache" / "fusion" / "zero_shot_heads";
  return {};
}

}  // namespace fusion::image_classification
