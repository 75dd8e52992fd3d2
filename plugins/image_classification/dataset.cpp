#include "dataset.hpp"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <sstream>

#include "fusion/error.hpp"

namespace fusion::image_classification {
namespace fs = std::filesystem;

namespace {

bool all_digits(const std::string& s) {
  return !s.empty() && s.size() <= 9 &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

void check_label(int64_t label, std::optional<int64_t> num_classes, const std::string& where,
                 const std::string& sample) {
  FUSION_ENSURE(label >= 0, where, ": ", sample, ": label ", label, " is negative");
  if (num_classes) {
    FUSION_ENSURE(label < *num_classes, where, ": ", sample, ": label ", label,
                  " is out of range: the task has ", *num_classes, " classes (labels 0..",
                  *num_classes - 1, ")");
  }
}

// Splits one CSV record (RFC 4180: fields may be quoted, "" is a quote inside quotes).
std::vector<std::string> split_csv(const std::string& line, const std::string& where) {
  std::vector<std::string> out;
  std::string field;
  bool quoted = false, was_quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < line.size() && line[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        field += c;
      }
    } else if (c == '"' && field.empty() && !was_quoted) {
      quoted = was_quoted = true;
    } else if (c == ',') {
      out.push_back(field);
      field.clear();
      was_quoted = false;
    } else {
      field += c;
    }
  }
  FUSION_ENSURE(!quoted, where, ": unterminated quoted field");
  out.push_back(field);
  return out;
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// The labels file beside an IDX images file: "images" → "labels", "idx3" → "idx1".
fs::path idx_labels_path(const fs::path& images) {
  std::string name = images.filename().string();
  const size_t a = name.find("images");
  const size_t b = name.find("idx3");
  FUSION_ENSURE(a != std::string::npos && b != std::string::npos, "IDX images file '", images.string(),
                "': its name must contain 'images' and 'idx3' (as train-images-idx3-ubyte.gz) so that "
                "the labels file can be found beside it");
  name.replace(a, 6, "labels");
  name.replace(name.find("idx3"), 4, "idx1");
  return images.parent_path() / name;
}

}  // namespace

DataFormat parse_format(const std::string& text, const std::string& where) {
  if (text == "auto") return DataFormat::Auto;
  if (text == "folder") return DataFormat::Folder;
  if (text == "csv") return DataFormat::Csv;
  if (text == "idx") return DataFormat::Idx;
  FUSION_FAIL(where, ": unknown data format '", text, "' (expected auto, folder, csv or idx)");
}

const char* format_name(DataFormat format) {
  switch (format) {
    case DataFormat::Auto: return "auto";
    case DataFormat::Folder: return "folder";
    case DataFormat::Csv: return "csv";
    case DataFormat::Idx: return "idx";
  }
  return "?";
}

std::vector<uint8_t> read_maybe_gzipped(const fs::path& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  FUSION_ENSURE(f != nullptr, "cannot open '", path.string(), "'");
  std::vector<uint8_t> out;
  std::vector<uint8_t> chunk(1 << 20);
  for (;;) {
    const int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int errnum = 0;
      std::string msg = gzerror(f, &errnum);
      gzclose(f);
      FUSION_FAIL("cannot read '", path.string(), "': ", msg);
    }
    if (n == 0) break;
    out.insert(out.end(), chunk.begin(), chunk.begin() + n);
  }
  // gzread stops quietly at a truncated gzip stream; gzclose_r reports it... only as Z_BUF_ERROR.
  const int rc = gzclose(f);
  FUSION_ENSURE(rc == Z_OK, "cannot read '", path.string(), "': truncated or corrupt gzip data");
  return out;
}

Dataset Dataset::open(const fs::path& path, DataFormat format, const std::string& where,
                      std::optional<int64_t> num_classes) {
  std::error_code ec;
  FUSION_ENSURE(fs::exists(path, ec), where, ": '", path.string(), "' does not exist");
  if (format == DataFormat::Auto) {
    const std::string name = path.filename().string();
    if (fs::is_directory(path, ec)) {
      format = DataFormat::Folder;
    } else if (path.extension() == ".csv" || path.extension() == ".CSV") {
      format = DataFormat::Csv;
    } else if (name.find("idx3") != std::string::npos) {
      format = DataFormat::Idx;
    } else {
      FUSION_FAIL(where, ": cannot tell the format of '", path.string(),
                  "' (a class folder, a .csv manifest or an IDX images file); set its format");
    }
  }
  Dataset d;
  d.format_ = format;
  d.path_ = path;

  if (format == DataFormat::Folder) {
    FUSION_ENSURE(fs::is_directory(path, ec), where, ": '", path.string(),
                  "' is not a folder (format folder expects one subfolder per class)");
    std::vector<std::string> classes;
    for (const auto& e : fs::directory_iterator(path, ec)) {
      const std::string name = e.path().filename().string();
      if (e.is_directory() && !name.empty() && name[0] != '.') classes.push_back(name);
    }
    FUSION_ENSURE(!ec, where, ": cannot list '", path.string(), "': ", ec.message());
    FUSION_ENSURE(!classes.empty(), where, ": '", path.string(),
                  "' has no class subfolders (format folder expects one subfolder of images per class)");
    const bool numeric = std::all_of(classes.begin(), classes.end(), all_digits);
    std::vector<std::pair<int64_t, std::string>> order;
    if (numeric) {
      for (const auto& c : classes) order.emplace_back(std::stoll(c), c);
      std::sort(order.begin(), order.end());
    } else {
      std::sort(classes.begin(), classes.end());
      for (size_t i = 0; i < classes.size(); ++i) order.emplace_back(static_cast<int64_t>(i), classes[i]);
      d.folder_classes_ = classes;
      if (num_classes) {
        FUSION_ENSURE(static_cast<int64_t>(classes.size()) == *num_classes, where, ": '", path.string(),
                      "' has ", classes.size(), " class folders but the task has ", *num_classes,
                      " classes (name the folders 0..", *num_classes - 1,
                      " to give labels explicitly)");
      }
    }
    for (const auto& [label, name] : order) {
      const fs::path dir = path / name;
      check_label(label, num_classes, where, "class folder '" + dir.string() + "'");
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(dir, ec)) {
        if (!e.is_regular_file()) continue;
        if (is_image_file(e.path())) {
          files.push_back(e.path());
        } else if (e.path().filename().string()[0] != '.') {
          ++d.ignored_files_;
        }
      }
      FUSION_ENSURE(!ec, where, ": cannot list '", dir.string(), "': ", ec.message());
      FUSION_ENSURE(!files.empty(), where, ": class folder '", dir.string(),
                    "' holds no images (.jpg .jpeg .png .bmp .gif .ppm .pgm .pnm)");
      std::sort(files.begin(), files.end());
      for (auto& f : files) {
        d.files_.push_back(std::move(f));
        d.labels_.push_back(label);
      }
    }
    return d;
  }

  if (format == DataFormat::Csv) {
    std::ifstream in(path);
    FUSION_ENSURE(in, where, ": cannot open '", path.string(), "'");
    std::string line;
    int64_t line_no = 0, path_col = -1, label_col = -1;
    size_t columns = 0;
    const fs::path base = path.parent_path();
    while (std::getline(in, line)) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line_no == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // UTF-8 BOM
      const std::string at = path.string() + ":" + std::to_string(line_no);
      if (trim(line).empty()) continue;
      std::vector<std::string> fields = split_csv(line, where + ": " + at);
      if (path_col < 0) {
        for (size_t i = 0; i < fields.size(); ++i) {
          const std::string h = trim(fields[i]);
          if (h == "path") path_col = static_cast<int64_t>(i);
          if (h == "label") label_col = static_cast<int64_t>(i);
        }
        FUSION_ENSURE(path_col >= 0 && label_col >= 0, where, ": ", at,
                      ": the header must name the columns 'path' and 'label' (found '", line, "')");
        columns = fields.size();
        continue;
      }
      FUSION_ENSURE(fields.size() == columns, where, ": ", at, ": expected ", columns,
                    " fields as in the header, found ", fields.size());
      const std::string file = trim(fields[path_col]);
      const std::string label_text = trim(fields[label_col]);
      FUSION_ENSURE(!file.empty(), where, ": ", at, ": empty path");
      int64_t label = 0;
      size_t used = 0;
      try {
        label = std::stoll(label_text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      FUSION_ENSURE(!label_text.empty() && used == label_text.size(), where, ": ", at, ": label '",
                    label_text, "' is not an integer");
      check_label(label, num_classes, where, at);
      const fs::path p(file);
      d.files_.push_back(p.is_absolute() ? p : base / p);
      d.labels_.push_back(label);
    }
    FUSION_ENSURE(path_col >= 0, where, ": '", path.string(), "' is empty (expected a header 'path,label')");
    FUSION_ENSURE(!d.labels_.empty(), where, ": '", path.string(), "' lists no samples");
    return d;
  }

  // IDX.
  const fs::path labels_path = idx_labels_path(path);
  FUSION_ENSURE(fs::exists(labels_path, ec), where, ": the labels file '", labels_path.string(),
                "' for the IDX images '", path.string(), "' does not exist");
  const std::vector<uint8_t> images = read_maybe_gzipped(path);
  const std::vector<uint8_t> labels = read_maybe_gzipped(labels_path);
  FUSION_ENSURE(images.size() >= 16 && be32(images.data()) == 0x00000803, where, ": '", path.string(),
                "' is not an IDX file of 8-bit images (magic 0x00000803 and 3 dimensions expected)");
  FUSION_ENSURE(labels.size() >= 8 && be32(labels.data()) == 0x00000801, where, ": '",
                labels_path.string(), "' is not an IDX file of 8-bit labels (magic 0x00000801 expected)");
  const int64_t n = be32(images.data() + 4), rows = be32(images.data() + 8), cols = be32(images.data() + 12);
  const int64_t n_labels = be32(labels.data() + 4);
  // n · rows · cols of three 32-bit header fields can exceed int64 (found by fuzz/fuzz_idx).
  int64_t pixels = 0;
  const bool fits = !__builtin_mul_overflow(n, rows, &pixels) && !__builtin_mul_overflow(pixels, cols, &pixels);
  FUSION_ENSURE(rows > 0 && cols > 0 && fits && static_cast<int64_t>(images.size()) - 16 == pixels, where,
                ": '", path.string(), "' holds ", images.size() - 16, " bytes of pixels, but its header says ",
                n, " images of ", rows, " x ", cols);
  FUSION_ENSURE(static_cast<int64_t>(labels.size()) == 8 + n_labels, where, ": '", labels_path.string(),
                "' holds ", labels.size() - 8, " labels, but its header says ", n_labels);
  FUSION_ENSURE(n == n_labels, where, ": '", path.string(), "' has ", n, " images but '",
                labels_path.string(), "' has ", n_labels, " labels");
  FUSION_ENSURE(n > 0, where, ": '", path.string(), "' holds no images");
  d.labels_.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    d.labels_[i] = labels[8 + i];
    check_label(d.labels_[i], num_classes, where,
                "'" + labels_path.string() + "' sample " + std::to_string(i));
  }
  d.idx_rows_ = rows;
  d.idx_cols_ = cols;
  d.idx_pixels_ = std::make_shared<const std::vector<uint8_t>>(images.begin() + 16, images.end());
  return d;
}

Image Dataset::load(int64_t i) const {
  FUSION_ENSURE(i >= 0 && i < size(), "sample ", i, " out of range for '", path_.string(), "'");
  if (format_ == DataFormat::Idx) {
    return grey_to_rgb(idx_pixels_->data() + i * idx_rows_ * idx_cols_, idx_cols_, idx_rows_);
  }
  return read_image(files_[i]);
}

std::string Dataset::sample_name(int64_t i) const {
  if (format_ == DataFormat::Idx) return path_.string() + "[" + std::to_string(i) + "]";
  return files_.at(i).string();
}

int64_t Dataset::label_count() const {
  return labels_.empty() ? 0 : *std::max_element(labels_.begin(), labels_.end()) + 1;
}

}  // namespace fusion::image_classification
