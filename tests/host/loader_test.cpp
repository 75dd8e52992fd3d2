// The plugin loader, with the purpose-built plugins of tests/host/plugins.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "plugin_host.hpp"

namespace fusion::host {
namespace {

namespace fs = std::filesystem;

const fs::path kPlugins = FUSION_HOST_TEST_PLUGIN_DIR;
const fs::path kGood = kPlugins / "good" / "fusion_host_test_good.so";
fs::path bad(const std::string& name) { return kPlugins / "bad" / ("fusion_host_test_" + name + ".so"); }

class Loader : public ::testing::Test {
 protected:
  Loader() : log_(LogLevel::Error), host_(log_) {}
  std::string only_refusal_reason() {
    EXPECT_EQ(host_.refused().size(), 1u);
    return host_.refused().empty() ? "" : host_.refused()[0].reason;
  }
  Logger log_;
  PluginHost host_;
};

TEST_F(Loader, GoodPluginRegistersItsComponents) {
  ASSERT_TRUE(host_.load_file(kGood));
  ASSERT_EQ(host_.loaded().size(), 1u);
  const LoadedPlugin& p = host_.loaded()[0];
  EXPECT_EQ(p.name, "host_test_good");
  EXPECT_EQ(p.version, "1.2.3");
  EXPECT_EQ(p.abi_version, static_cast<uint32_t>(FUSION_ABI_VERSION));
  EXPECT_EQ(p.api_level, static_cast<uint32_t>(FUSION_API_LEVEL));
  EXPECT_EQ(p.components,
            (std::vector<std::string>{"test_pretrained", "test_sweep", "test_pool", "test_tasks"}));
  const Component* c = host_.find("test_sweep");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->kind, ComponentKind::Algorithm);
  EXPECT_EQ(c->origin, fs::canonical(kGood).string());
  ASSERT_NE(c->info.schema.find("lambdas"), nullptr);
  EXPECT_EQ(host_.find("test_pool")->kind, ComponentKind::ModelPool);
  EXPECT_EQ(host_.find("test_tasks")->kind, ComponentKind::TaskPool);
  // Loading the same file again is a no-op.
  EXPECT_TRUE(host_.load_file(kGood));
  EXPECT_EQ(host_.loaded().size(), 1u);
  EXPECT_TRUE(host_.refused().empty());
}

TEST_F(Loader, GoodPluginFactoriesWork) {
  ASSERT_TRUE(host_.load_file(kGood));
  const Component& pool = host_.require(ComponentKind::ModelPool, "modelpool", "test_pool");
  Context ctx;
  Config cfg = Config::validate("modelpool", {{"pretrained", std::vector<double>{0.5, 0.25}}},
                                pool.info.schema);
  auto mp = pool.model_pool(ctx.with_config(cfg));
  ASSERT_TRUE(mp);
  EXPECT_DOUBLE_EQ(mp->pretrained()->parameters().at("w")[1].item<double>(), 0.25);
}

TEST_F(Loader, WrongAbiIsRefusedWithTheExactReason) {
  EXPECT_FALSE(host_.load_file(bad("wrong_abi")));
  EXPECT_EQ(only_refusal_reason(), "built for ABI 999, host has ABI " + std::to_string(FUSION_ABI_VERSION));
  EXPECT_TRUE(host_.loaded().empty());
  EXPECT_TRUE(host_.components().empty());
}

TEST_F(Loader, WrongTorchIsRefused) {
  EXPECT_FALSE(host_.load_file(bad("wrong_torch")));
  EXPECT_EQ(only_refusal_reason(),
            std::string("built against LibTorch 0.0.1, host has LibTorch ") + TORCH_VERSION);
}

// A plugin built against an older 1.x (here: this SDK) loads in a newer 1.y host.
TEST_F(Loader, OlderApiLevelLoadsInNewerHost) {
  PluginHost newer(log_, FUSION_API_LEVEL + 2);
  ASSERT_TRUE(newer.load_file(kGood));
  EXPECT_TRUE(newer.refused().empty());
  EXPECT_NE(newer.find("test_sweep"), nullptr);
}

TEST_F(Loader, NewerApiLevelIsRefusedWithTheReason) {
  EXPECT_FALSE(host_.load_file(bad("newer_api")));
  const std::string v = FUSION_VERSION_STRING;
  EXPECT_EQ(only_refusal_reason(), "built with fusion SDK " + v + " (API level " +
                                       std::to_string(FUSION_API_LEVEL + 1) + "), newer than this host's SDK " +
                                       v + " (API level " + std::to_string(FUSION_API_LEVEL) + "): update fusion");
  EXPECT_TRUE(host_.components().empty());
}

TEST_F(Loader, OtherMajorVersionIsRefused) {
  EXPECT_FALSE(host_.load_file(bad("other_major")));
  const std::string v = FUSION_VERSION_STRING;
  EXPECT_EQ(only_refusal_reason(), "built with fusion SDK " + v + " (major version " +
                                       std::to_string(FUSION_VERSION_MAJOR + 1) + "), host has SDK " + v +
                                       " (major version " + std::to_string(FUSION_VERSION_MAJOR) + ")");
}

TEST_F(Loader, Cxx11AbiMismatchIsRefused) {
  EXPECT_FALSE(host_.load_file(bad("cxx11_abi")));
  EXPECT_EQ(only_refusal_reason(), "built with _GLIBCXX_USE_CXX11_ABI=" +
                                       std::to_string(_GLIBCXX_USE_CXX11_ABI ? 0 : 1) +
                                       ", host has _GLIBCXX_USE_CXX11_ABI=" +
                                       std::to_string(_GLIBCXX_USE_CXX11_ABI));
}

TEST_F(Loader, InitThatThrowsIsRefused) {
  EXPECT_FALSE(host_.load_file(bad("init_throws")));
  EXPECT_EQ(only_refusal_reason(), "init failed: init failed on purpose");
  EXPECT_TRUE(host_.components().empty());
}

TEST_F(Loader, DuplicateComponentRefusesTheWholePluginNamingBoth) {
  ASSERT_TRUE(host_.load_file(kGood));
  EXPECT_FALSE(host_.load_file(bad("duplicate")));
  std::string reason = only_refusal_reason();
  EXPECT_EQ(reason, "init failed: component 'test_pretrained' is already registered by plugin " +
                        fs::canonical(kGood).string());
  EXPECT_EQ(host_.refused()[0].file, fs::canonical(bad("duplicate")));
  // Nothing of the refused plugin is registered, not even its names registered before the clash.
  EXPECT_EQ(host_.find("test_only_in_duplicate"), nullptr);
  EXPECT_EQ(host_.components().size(), 4u);
}

TEST_F(Loader, LibraryWithoutEntry) {
  EXPECT_FALSE(host_.load_file(bad("no_entry")));
  EXPECT_NE(only_refusal_reason().find("no entry symbol 'fusion_plugin_init'"), std::string::npos);
}

TEST_F(Loader, FileThatIsNotALibrary) {
  fs::path dir = fs::temp_directory_path() / "fusion_loader_test_notlib";
  fs::create_directories(dir);
  {
    std::ofstream out(dir / "x.so");
    for (int i = 0; i < 20; ++i) out << "this is a text file, not an ELF shared library\n";
  }
  EXPECT_FALSE(host_.load_file(dir / "x.so"));
  std::string reason = only_refusal_reason();
  EXPECT_EQ(reason.rfind("not a loadable library: ", 0), 0u) << reason;
  EXPECT_NE(reason.find("invalid ELF header"), std::string::npos) << reason;
  fs::remove_all(dir);
}

TEST_F(Loader, FolderLoadsEveryLibraryAndRecordsRefusals) {
  ASSERT_TRUE(host_.load_file(kGood));
  EXPECT_EQ(host_.load_path(kPlugins / "bad"), 8u);
  ASSERT_EQ(host_.refused().size(), 8u);
  EXPECT_EQ(host_.loaded().size(), 1u);
  // Sorted by file name.
  EXPECT_EQ(host_.refused()[0].file.filename(), "fusion_host_test_cxx11_abi.so");
  EXPECT_THROW(host_.load_path(kPlugins / "does_not_exist"), Error);
}

TEST_F(Loader, RequireNamesTheComponentAndTheRefusedPlugins) {
  ASSERT_TRUE(host_.load_file(kGood));
  host_.load_file(bad("wrong_abi"));
  try {
    host_.require(ComponentKind::Algorithm, "method", "task_arithmetic");
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_EQ(msg.rfind("method.name: unknown algorithm 'task_arithmetic'; known: test_pretrained, "
                        "test_sweep; refused plugins: fusion_host_test_wrong_abi.so (built for ABI "
                        "999, host has ABI " + std::to_string(FUSION_ABI_VERSION) + ")",
                        0),
              0u)
        << msg;
  }
  try {
    host_.require(ComponentKind::Algorithm, "method", "test_pool");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'test_pool' is a modelpool, not an algorithm"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(Loader, BuiltinSafetensorsPool) {
  host_.add_builtins();
  const Component* c = host_.find("safetensors");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->kind, ComponentKind::ModelPool);
  EXPECT_EQ(c->origin, "built-in");
  // A plugin may not take a built-in's name.
  EXPECT_THROW(host_.add_model_pool(c->info, c->model_pool), Error);
}

TEST(LoaderSearchPath, EnvironmentFoldersAfterDefaults) {
  setenv("FUSION_PLUGIN_PATH", "/a:/b/c.so::/d", 1);
  setenv("FUSION_NO_DEFAULT_PLUGINS", "1", 1);
  auto path = PluginHost::default_search_path();
  EXPECT_EQ(path, (std::vector<fs::path>{"/a", "/b/c.so", "/d"}));
  unsetenv("FUSION_PLUGIN_PATH");
  setenv("FUSION_NO_DEFAULT_PLUGINS", "0", 1);
  path = PluginHost::default_search_path();
  // This test binary runs from the build's bin folder, like `fusion`: the build's plugin folder
  // comes first, then the install's folder relative to the binary.
  const fs::path build = kPlugins.parent_path().parent_path().parent_path();
  ASSERT_EQ(path.size(), 2u);
  EXPECT_EQ(fs::weakly_canonical(path[0]), fs::weakly_canonical(build / "plugins"));
  EXPECT_EQ(fs::weakly_canonical(path[1]), fs::weakly_canonical(build / "lib" / "fusion" / "plugins"));
  unsetenv("FUSION_NO_DEFAULT_PLUGINS");
}

}  // namespace
}  // namespace fusion::host
