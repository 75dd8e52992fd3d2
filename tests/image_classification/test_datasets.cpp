// Data sources: class folders, CSV manifests, IDX files (plain and gzipped), and their errors.
#include <gtest/gtest.h>

#include "dataset.hpp"
#include "support.hpp"

namespace fusion::image_classification {
namespace {
using namespace testing;
namespace fs = std::filesystem;

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(FolderSource, ClassesSortedByNameFilesSorted) {
  TempDir tmp("folder");
  write_solid(tmp / "split/cat/b.png", 4, 4, 1, 1, 1);
  write_solid(tmp / "split/cat/a.PNG", 4, 4, 2, 2, 2);
  write_solid(tmp / "split/ant/x.jpg", 4, 4, 3, 3, 3);
  write_solid(tmp / "split/dog/y.png", 4, 4, 4, 4, 4);
  write_text(tmp / "split/dog/notes.txt", "not an image");
  write_text(tmp / "split/dog/.hidden", "");
  Dataset d = Dataset::open(tmp / "split", DataFormat::Auto, "t");
  EXPECT_EQ(d.format(), DataFormat::Folder);
  EXPECT_EQ(d.folder_classes(), (std::vector<std::string>{"ant", "cat", "dog"}));
  EXPECT_EQ(d.labels(), (std::vector<int64_t>{0, 1, 1, 2}));
  EXPECT_EQ(fs::path(d.sample_name(1)).filename(), "a.PNG");
  EXPECT_EQ(d.load(1).rgb[0], 2);
  EXPECT_EQ(d.load(2).rgb[0], 1);
  EXPECT_EQ(d.ignored_files(), 1);
}

TEST(FolderSource, NumericFoldersAreLabels) {
  TempDir tmp("numeric");
  for (int c : {0, 2, 10}) write_solid(tmp / ("s/" + std::to_string(c) + "/i.png"), 2, 2, 9, 9, 9);
  Dataset d = Dataset::open(tmp / "s", DataFormat::Folder, "t", 11);
  // Sorted by number, not by text ("10" < "2"), and the number is the label.
  EXPECT_EQ(d.labels(), (std::vector<int64_t>{0, 2, 10}));
  EXPECT_TRUE(d.folder_classes().empty());
  const std::string msg = error_of([&] { Dataset::open(tmp / "s", DataFormat::Folder, "task 'x' test split", 10); });
  EXPECT_TRUE(contains(msg, "task 'x' test split")) << msg;
  EXPECT_TRUE(contains(msg, "label 10 is out of range")) << msg;
  EXPECT_TRUE(contains(msg, (tmp / "s" / "10").string())) << msg;
}

TEST(FolderSource, Errors) {
  TempDir tmp("folder_err");
  write_solid(tmp / "s/a/1.png", 2, 2, 0, 0, 0);
  fs::create_directories(tmp / "s/b");
  write_text(tmp / "s/b/readme.md", "x");
  std::string msg = error_of([&] { Dataset::open(tmp / "s", DataFormat::Auto, "task 'x' test split"); });
  EXPECT_TRUE(contains(msg, "class folder '" + (tmp / "s" / "b").string() + "' holds no images")) << msg;

  msg = error_of([&] { Dataset::open(tmp / "nope", DataFormat::Auto, "task 'x' test split"); });
  EXPECT_TRUE(contains(msg, "task 'x' test split: '" + (tmp / "nope").string() + "' does not exist")) << msg;

  fs::create_directories(tmp / "flat");
  write_solid(tmp / "flat/1.png", 2, 2, 0, 0, 0);
  msg = error_of([&] { Dataset::open(tmp / "flat", DataFormat::Folder, "t"); });
  EXPECT_TRUE(contains(msg, "has no class subfolders")) << msg;

  write_solid(tmp / "named/a/1.png", 2, 2, 0, 0, 0);
  write_solid(tmp / "named/b/1.png", 2, 2, 0, 0, 0);
  msg = error_of([&] { Dataset::open(tmp / "named", DataFormat::Folder, "t", 3); });
  EXPECT_TRUE(contains(msg, "has 2 class folders but the task has 3 classes")) << msg;
}

TEST(CsvSource, PathsRelativeToTheManifest) {
  TempDir tmp("csv");
  write_solid(tmp / "imgs/a.png", 3, 3, 10, 0, 0);
  write_solid(tmp / "imgs/b,c.png", 3, 3, 20, 0, 0);
  write_text(tmp / "test.csv", "id,label,path\r\n1,2,imgs/a.png\r\n\r\n2,0,\"imgs/b,c.png\"\r\n");
  Dataset d = Dataset::open(tmp / "test.csv", DataFormat::Auto, "t", 3);
  EXPECT_EQ(d.format(), DataFormat::Csv);
  EXPECT_EQ(d.labels(), (std::vector<int64_t>{2, 0}));
  EXPECT_EQ(d.load(0).rgb[0], 10);
  EXPECT_EQ(d.load(1).rgb[0], 20);
  EXPECT_EQ(d.sample_name(1), (tmp / "imgs" / "b,c.png").string());
}

TEST(CsvSource, Errors) {
  TempDir tmp("csv_err");
  auto err = [&](const std::string& text, std::optional<int64_t> classes = 5) {
    write_text(tmp / "m.csv", text);
    return error_of([&] { Dataset::open(tmp / "m.csv", DataFormat::Csv, "task 'x' train split", classes); });
  };
  const std::string file = (tmp / "m.csv").string();
  std::string msg = err("path,label\na.png,1\nb.png,seven\n");
  EXPECT_TRUE(contains(msg, "task 'x' train split: " + file + ":3: label 'seven' is not an integer")) << msg;
  msg = err("path,label\na.png,5\n");
  EXPECT_TRUE(contains(msg, file + ":2: label 5 is out of range: the task has 5 classes")) << msg;
  msg = err("path,label\na.png,-1\n");
  EXPECT_TRUE(contains(msg, "label -1 is negative")) << msg;
  msg = err("file,class\na.png,1\n");
  EXPECT_TRUE(contains(msg, file + ":1: the header must name the columns 'path' and 'label'")) << msg;
  msg = err("path,label\na.png\n");
  EXPECT_TRUE(contains(msg, file + ":2: expected 2 fields")) << msg;
  msg = err("path,label\n");
  EXPECT_TRUE(contains(msg, "lists no samples")) << msg;
  // A listed file that is missing is a bad image, found when it is loaded.
  write_text(tmp / "m.csv", "path,label\nmissing.png,1\n");
  Dataset d = Dataset::open(tmp / "m.csv", DataFormat::Csv, "t", 5);
  EXPECT_THROW(d.load(0), BadImage);
}

class IdxSource : public ::testing::TestWithParam<bool> {};

TEST_P(IdxSource, ReadsImagesAndLabels) {
  const bool gz = GetParam();
  TempDir tmp("idx");
  std::vector<uint8_t> px(3 * 2 * 4);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 10);
  const fs::path images = write_idx(tmp.path(), "t10k", px, {7, 0, 9}, 2, 4, gz);
  Dataset d = Dataset::open(images, DataFormat::Auto, "t", 10);
  EXPECT_EQ(d.format(), DataFormat::Idx);
  EXPECT_EQ(d.labels(), (std::vector<int64_t>{7, 0, 9}));
  const Image img = d.load(1);
  EXPECT_EQ(img.width, 4);
  EXPECT_EQ(img.height, 2);
  // Sample 1 starts at byte 8; grey is replicated into RGB.
  EXPECT_EQ(img.rgb[0], 80);
  EXPECT_EQ(img.rgb[2], 80);
  EXPECT_EQ(img.rgb[3 * 5], 130);
  EXPECT_EQ(d.sample_name(2), images.string() + "[2]");
  const std::string msg = error_of([&] { Dataset::open(images, DataFormat::Idx, "t", 9); });
  EXPECT_TRUE(contains(msg, "sample 2: label 9 is out of range")) << msg;
}
INSTANTIATE_TEST_SUITE_P(PlainAndGzip, IdxSource, ::testing::Bool());

TEST(IdxSourceErrors, NameTheFile) {
  TempDir tmp("idx_err");
  std::vector<uint8_t> px(2 * 2 * 2, 1);
  fs::path images = write_idx(tmp.path(), "train", px, {1, 2, 3}, 2, 2, false);
  std::string msg = error_of([&] { Dataset::open(images, DataFormat::Idx, "t"); });
  EXPECT_TRUE(contains(msg, "holds 3 labels") || contains(msg, "has 2 images")) << msg;

  fs::remove(tmp / "train-labels-idx1-ubyte");
  msg = error_of([&] { Dataset::open(images, DataFormat::Idx, "t"); });
  EXPECT_TRUE(contains(msg, "the labels file '" + (tmp / "train-labels-idx1-ubyte").string() + "'")) << msg;

  write_bytes(tmp / "x-images-idx3-ubyte", {0, 0, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0});
  write_bytes(tmp / "x-labels-idx1-ubyte", {0, 0, 8, 1, 0, 0, 0, 0});
  msg = error_of([&] { Dataset::open(tmp / "x-images-idx3-ubyte", DataFormat::Idx, "t"); });
  EXPECT_TRUE(contains(msg, "is not an IDX file of 8-bit images")) << msg;

  // A gzip stream cut short.
  px.assign(100 * 4, 3);
  images = write_idx(tmp / "cut", "train", px, std::vector<uint8_t>(100, 1), 2, 2, true);
  const auto size = fs::file_size(images);
  fs::resize_file(images, size / 2);
  msg = error_of([&] { Dataset::open(images, DataFormat::Idx, "t"); });
  EXPECT_TRUE(contains(msg, images.string())) << msg;

  msg = error_of([&] { Dataset::open(tmp / "x-labels-idx1-ubyte", DataFormat::Auto, "t"); });
  EXPECT_TRUE(contains(msg, "cannot tell the format")) << msg;
}

// Found by fuzz/fuzz_idx: a header whose count · rows · cols overflows int64 (signed overflow, UB)
// is a size mismatch like any other. 0x00200000³ = 2^63; 0xFFFFFFFF³ wraps around too.
TEST(IdxSourceErrors, HugeHeaderDimensionsAreAMismatch) {
  TempDir tmp("idx_huge");
  for (uint8_t b1 : {uint8_t{0x20}, uint8_t{0xFF}}) {
    SCOPED_TRACE(static_cast<int>(b1));
    const uint8_t b0 = b1 == 0xFF ? 0xFF : 0x00, rest = b1 == 0xFF ? 0xFF : 0x00;
    write_bytes(tmp / "h-images-idx3-ubyte", {0, 0, 8, 3, b0, b1, rest, rest, b0, b1, rest, rest, b0, b1, rest,
                                              rest, 1, 2, 3, 4});
    write_bytes(tmp / "h-labels-idx1-ubyte", {0, 0, 8, 1, 0, 0, 0, 1, 0});
    const std::string msg = error_of([&] { Dataset::open(tmp / "h-images-idx3-ubyte", DataFormat::Idx, "t"); });
    EXPECT_TRUE(contains(msg, "holds 4 bytes of pixels, but its header says")) << msg;
  }
}

}  // namespace
}  // namespace fusion::image_classification
