#include "cli.hpp"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

#include <boost/program_options.hpp>
#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "fusion/version.hpp"
#include "plugin_host.hpp"
#include "check_command.hpp"
#include "startup.hpp"
#include "distributed.hpp"
#include "run_command.hpp"

namespace fusion::host {

namespace po = boost::program_options;

namespace {

constexpr const char* kUsage = R"(fusion: merge models, compare merging methods

Usage:
  fusion run CONFIG.toml [key=value ...]  run the merge CONFIG.toml describes; each key=value
                                          overrides the file: method.scaling_factor=0.5,
                                          modelpool.models.mnist=ckpt/mnist, device=cpu (a key
                                          without a dot is a [run] key)
  fusion run --nproc N CONFIG.toml ...    the same run over N processes on this machine
                                          (docs/distributed.md)
  fusion plugins                          the plugins found, their components, and the plugins
                                          refused with the reason
  fusion describe NAME                    a component's options (NAME "run": the [run] table)
  fusion check NAME... | --all            the conformance suite on algorithms (docs/conformance.md):
        [--set [NAME.]key=value]          method options for the checks (weights=[0.5,0.5])
        [--skip [NAME.]CHECK]             a check to skip (reported as SKIP)
  fusion --help | --version
)";

constexpr const char* kEnvironment = R"(
Plugins are searched in: the build tree's plugin folder (when run from the build tree), the
installed <prefix>/lib/fusion/plugins, each folder of FUSION_PLUGIN_PATH (colon-separated; files
allowed), then [run] plugins = [...]. FUSION_NO_DEFAULT_PLUGINS=1 searches FUSION_PLUGIN_PATH only.
`fusion run` reads torchrun's RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT: with WORLD_SIZE > 1 it is one rank of a run over several processes (docs/distributed.md).
`fusion run` starts itself again with OMP_WAIT_POLICY=PASSIVE, before LibTorch loads, when that
variable is unset (OpenMP threads that busy-wait slow LibTorch down on few cores); set it to keep
your own choice.

Exit status: 0 success, 1 error (one line "fusion: error: ..."), 2 usage error.
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// "rank R: " for an error of one rank of several that does not name its rank yet.
std::string rank_prefix(const std::string& message) {
  const char* world = std::getenv("WORLD_SIZE");
  const char* rank = std::getenv("RANK");
  if (!world || !rank || std::atoi(world) <= 1 || message.rfind("rank ", 0) == 0) return "";
  return "rank " + std::string(rank) + ": ";
}

std::string section_of(ComponentKind kind) {
  switch (kind) {
    case ComponentKind::Algorithm: return "method";
    case ComponentKind::ModelPool: return "modelpool";
    case ComponentKind::TaskPool: return "taskpool";
  }
  return "?";
}

std::string bounds_text(const OptionSpec& o) {
  std::ostringstream out;
  if (o.min || o.max) {
    auto num = [](double d) {
      std::ostringstream s;
      s << d;
      return s.str();
    };
    out << "in [" << (o.min ? num(*o.min) : "-inf") << ", " << (o.max ? num(*o.max) : "inf") << "]";
  }
  if (!o.choices.empty()) {
    if (out.tellp() > 0) out << ", ";
    out << "one of ";
    for (size_t i = 0; i < o.choices.size(); ++i)
      out << (i ? ", " : "") << '"' << o.choices[i] << '"';
  }
  return out.str();
}

void print_schema(std::ostream& out, const Schema& schema) {
  if (schema.options().empty()) {
    out << "  (none besides name)\n";
    return;
  }
  size_t width = 0;
  for (const auto& o : schema.options()) width = std::max(width, o.name.size());
  for (const auto& o : schema.options()) {
    out << "  " << std::left << std::setw(static_cast<int>(width)) << o.name << "  "
        << type_name(o.type) << ", ";
    if (o.default_value)
      out << "default " << to_toml_string(*o.default_value);
    else if (o.optional_no_default)
      out << "optional";
    else
      out << "required";
    std::string b = bounds_text(o);
    if (!b.empty()) out << ", " << b;
    out << '\n';
    if (!o.doc.empty()) out << "      " << o.doc << '\n';
  }
}

std::string version_text() {
  std::ostringstream out;
  out << "fusion " << FUSION_VERSION_STRING << "\n"
      << "SDK ABI " << FUSION_ABI_VERSION << "\n"
      << "LibTorch " << TORCH_VERSION << "\n";
  if (!cuda_compiled())
    out << "CUDA: not available (LibTorch built without CUDA)\n";
  else if (int n = cuda_device_count(); n > 0)
    out << "CUDA: available, " << n << " GPU" << (n > 1 ? "s" : "") << "\n";
  else
    out << "CUDA: LibTorch has CUDA, but no GPU is visible\n";
  out << "BLAS: " << blas_kernels().describe() << "\n";
  return out.str();
}

int cmd_plugins(Logger& log) {
  log.set_level(LogLevel::Error);  // refusals are listed below
  PluginHost host(log);
  host.add_builtins();
  host.load_default();
  auto print_components = [&](const std::vector<std::string>& names) {
    size_t width = 0;
    for (const auto& n : names) width = std::max(width, n.size());
    for (const auto& n : names) {
      const Component* c = host.find(n);
      if (!c) continue;
      std::cout << "    " << std::left << std::setw(10) << kind_name(c->kind) << ' '
                << std::setw(static_cast<int>(width)) << n << "  " << c->info.summary << '\n';
    }
  };
  std::vector<std::string> builtins;
  for (const auto& c : host.components())
    if (c.origin == "built-in") builtins.push_back(c.info.name);
  std::cout << "built-in (fusion " << FUSION_VERSION_STRING << ", ABI " << FUSION_ABI_VERSION
            << ", API level " << FUSION_API_LEVEL << ")\n";
  print_components(builtins);
  for (const auto& p : host.loaded()) {
    std::cout << p.name << ' ' << p.version << " (ABI " << p.abi_version << ", API level "
              << p.api_level << ", SDK " << p.sdk_version << ", LibTorch " << p.torch_version << ")\n"
              << "    file: " << p.file.string() << '\n';
    print_components(p.components);
  }
  if (host.loaded().empty()) std::cout << "no plugins found\n";
  if (!host.refused().empty()) {
    std::cout << "refused:\n";
    for (const auto& r : host.refused())
      std::cout << "    " << r.file.string() << ": " << r.reason << '\n';
  }
  return 0;
}

int cmd_describe(Logger& log, const std::string& name) {
  if (name == "run") {
    std::cout << "run: the [run] table of a config (read by the host)\n\nOptions ([run] table):\n";
    print_schema(std::cout, run_schema());
    return 0;
  }
  PluginHost host(log);
  host.add_builtins();
  host.load_default();
  const Component* c = host.find(name);
  if (!c) {
    std::string known;
    for (const auto& k : host.components()) known += (known.empty() ? "" : ", ") + k.info.name;
    FUSION_FAIL("unknown component '", name, "'; known components: ",
                known.empty() ? "none" : known, " (and \"run\")");
  }
  std::cout << c->info.name << ": " << kind_name(c->kind) << " ("
            << (c->origin == "built-in" ? "built-in" : "plugin " + c->origin) << ")\n";
  if (!c->info.summary.empty()) std::cout << "  " << c->info.summary << '\n';
  if (!c->info.reference.empty()) std::cout << "  reference: " << c->info.reference << '\n';
  if (c->kind == ComponentKind::Algorithm)
    std::cout << "  needs: " << c->info.requirements.describe() << '\n';
  std::cout << "\nOptions ([" << section_of(c->kind) << "] table, with name = \"" << c->info.name
            << "\"):\n";
  print_schema(std::cout, c->info.schema);
  return 0;
}

}  // namespace

int cli_main(int argc, char** argv) {
  auto logger = std::make_shared<Logger>(LogLevel::Info);
  try {
    // `fusion [-v|-q] check ...` has options of its own (--set, --skip, --all): its arguments are
    // not parsed as fusion's.
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "-v" || a == "--verbose") continue;
      if (a == "-q" || a == "--quiet") continue;
      if (a != "check") break;
      for (int j = 1; j < i; ++j) {
        const std::string g = argv[j];
        logger->set_level(g == "-v" || g == "--verbose" ? LogLevel::Debug : LogLevel::Warn);
      }
      CheckRequest request;
      try {
        request = parse_check_arguments(std::vector<std::string>(argv + i + 1, argv + argc));
      } catch (const CheckUsageError& e) {
        throw UsageError(std::string("check: ") + e.what());
      }
      return check_command(request, logger, std::cout);
    }
    po::options_description visible("Options");
    visible.add_options()
        ("help,h", "print this help and exit")
        ("version,V", "print the versions of fusion, its SDK ABI and LibTorch, whether CUDA is there, and the BLAS kernels")
        ("verbose,v", "log debug messages too")
        ("quiet,q", "log warnings and errors only")
        ("nproc", po::value<int>(), "run: start N processes (ranks) on this machine, over Gloo on 127.0.0.1");
    po::options_description hidden;
    hidden.add_options()
        ("command", po::value<std::string>())
        ("args", po::value<std::vector<std::string>>()->multitoken());
    po::options_description all;
    all.add(visible).add(hidden);
    po::positional_options_description positional;
    positional.add("command", 1).add("args", -1);
    po::variables_map vm;
    try {
      auto style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
      po::store(po::command_line_parser(argc, argv).options(all).positional(positional).style(style).run(), vm);
      po::notify(vm);
    } catch (const po::error& e) {
      throw UsageError(e.what());
    }
    if (vm.count("verbose")) logger->set_level(LogLevel::Debug);
    if (vm.count("quiet")) logger->set_level(LogLevel::Warn);
    if (vm.count("help")) {
      std::cout << kUsage << '\n' << visible << kEnvironment;
      return 0;
    }
    if (vm.count("version")) {
      std::cout << version_text();
      return 0;
    }
    if (!vm.count("command")) throw UsageError("no command given (run, plugins, describe or check)");
    const std::string command = vm["command"].as<std::string>();
    std::vector<std::string> args =
        vm.count("args") ? vm["args"].as<std::vector<std::string>>() : std::vector<std::string>{};
    if (command == "run") {
      if (args.empty()) throw UsageError("run: missing CONFIG.toml");
      if (vm.count("nproc")) {
        const int n = vm["nproc"].as<int>();
        if (n < 1 || n > 1024) throw UsageError("--nproc " + std::to_string(n) + ": expected 1 to 1024");
        const char* world = std::getenv("WORLD_SIZE");
        if (world && std::string(world) != "" && std::string(world) != "1")
          throw UsageError("--nproc with WORLD_SIZE=" + std::string(world) +
                           " set: this process is already one rank of a launched run");
        // argv without --nproc N / --nproc=N
        std::vector<std::string> child;
        for (int i = 0; i < argc; ++i) {
          const std::string a = argv[i];
          if (a == "--nproc") {
            ++i;
            continue;
          }
          if (a.rfind("--nproc=", 0) == 0) continue;
          child.push_back(a);
        }
        return launch_local(n, child);
      }
      RunRequest request;
      request.config = args[0];
      request.overrides.assign(args.begin() + 1, args.end());
      request.command_line.assign(argv, argv + argc);
      watch_interruptions();  // SIGINT/SIGTERM: temporary files removed, one line, exit 130/143
      run(request, logger);
      return 0;
    }
    if (command == "plugins") {
      if (!args.empty()) throw UsageError("plugins: unexpected argument '" + args[0] + "'");
      return cmd_plugins(*logger);
    }
    if (command == "describe") {
      if (args.size() != 1)
        throw UsageError(args.empty() ? "describe: missing component NAME"
                                      : "describe: unexpected argument '" + args[1] + "'");
      return cmd_describe(*logger, args[0]);
    }
    throw UsageError("unknown command '" + command + "' (run, plugins, describe or check)");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "fusion: error: %s; see fusion --help\n", one_line(e.what()).c_str());
    return 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "fusion: error: %s%s\n", rank_prefix(e.what_without_backtrace()).c_str(),
                 one_line(e.what_without_backtrace()).c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fusion: error: %s%s\n", rank_prefix(e.what()).c_str(), one_line(e.what()).c_str());
    return 1;
  } catch (...) {
    std::fprintf(stderr, "fusion: error: unknown exception (not a std::exception)\n");
    return 1;
  }
}

}  // namespace fusion::host
