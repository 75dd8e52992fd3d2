#include "distributed.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/util/Exception.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#if defined(FUSION_HAVE_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "fusion/error.hpp"

namespace fusion::host {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

std::string seconds_text(std::chrono::milliseconds t) {
  const double s = static_cast<double>(t.count()) / 1000.0;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g s", s);
  return buf;
}

// The message of an exception from c10d or Gloo on one line, without LibTorch's backtrace.
std::string cause_of(const std::exception& e) {
  const auto* c10 = dynamic_cast<const c10::Error*>(&e);
  std::string s = c10 ? c10->what_without_backtrace() : e.what();
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

std::optional<int> env_int(const char* name, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v, &end, 10);
  FUSION_ENSURE(*end == '\0' && errno == 0 && n >= lo && n <= hi, name, "=", v, ": expected an integer in [", lo,
                ", ", hi, "]");
  return static_cast<int>(n);
}

std::vector<uint8_t> bytes(const std::string& s) { return {s.begin(), s.end()}; }
std::string text(const std::vector<uint8_t>& b) { return {b.begin(), b.end()}; }

// The c10d process group as the SDK's communicator. Every failure is "rank R: <what> failed: ...".
class C10dCommunicator : public Communicator {
 public:
  /// `staging`: where tensors of another device travel through (NCCL moves CUDA tensors only: a
  /// CPU tensor is copied to the rank's GPU and the result copied back); unset for Gloo.
  C10dCommunicator(c10::intrusive_ptr<c10d::Store> store, c10::intrusive_ptr<c10d::ProcessGroup> pg, int rank,
                   int world, std::string backend, std::chrono::milliseconds timeout,
                   std::optional<at::Device> staging)
      : store_(std::move(store)), pg_(std::move(pg)), rank_(rank), world_(world), backend_(std::move(backend)),
        timeout_(timeout), staging_(staging) {}
  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  void all_reduce_sum(at::Tensor& tensor) const override {
    guarded("all_reduce", [&] {
      std::vector<at::Tensor> t{on_wire(tensor)};
      pg_->allreduce(t)->wait();
      if (!t[0].is_same(tensor)) tensor.copy_(t[0]);
    });
  }
  std::vector<at::Tensor> all_gather(const at::Tensor& tensor) const override {
    std::vector<at::Tensor> out;
    guarded("all_gather", [&] {
      std::vector<at::Tensor> in{on_wire(tensor)};
      std::vector<std::vector<at::Tensor>> outs(1);
      for (int r = 0; r < world_; ++r) outs[0].push_back(at::empty_like(in[0]));
      pg_->allgather(outs, in)->wait();
      out = std::move(outs[0]);
      if (!in[0].device().is_cpu() && tensor.device().is_cpu())
        for (at::Tensor& t : out) t = t.to(tensor.device());
    });
    return out;
  }
  void broadcast(at::Tensor& tensor, int root) const override {
    FUSION_ENSURE(root >= 0 && root < world_, "rank ", rank_, ": broadcast from rank ", root, " of ", world_);
    guarded("broadcast", [&] {
      std::vector<at::Tensor> t{on_wire(tensor)};
      c10d::BroadcastOptions o;
      o.rootRank = root;
      pg_->broadcast(t, o)->wait();
      if (!t[0].is_same(tensor)) tensor.copy_(t[0]);
    });
  }
  void barrier() const override {
    guarded("barrier", [&] { pg_->barrier()->wait(); });
  }

 private:
  template <class F>
  void guarded(const char* what, F&& f) const {
    try {
      f();
    } catch (const std::exception& e) {
      FUSION_FAIL("rank ", rank_, ": ", what, " (", backend_, ") failed: a peer rank exited or did not answer within ",
                  seconds_text(timeout_), " (run.timeout_s): ", cause_of(e));
    }
  }
  // The tensor as the backend takes it: contiguous, and on the staging device when it has one.
  at::Tensor on_wire(const at::Tensor& tensor) const {
    if (staging_ && tensor.device() != *staging_) return tensor.to(*staging_).contiguous();
    return tensor.is_contiguous() ? tensor : tensor.contiguous();
  }
  c10::intrusive_ptr<c10d::Store> store_;  // rank 0's holds the rendezvous server
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  int rank_, world_;
  std::string backend_;
  std::chrono::milliseconds timeout_;
  std::optional<at::Device> staging_;
};

// Rank 0: waits until every rank 1..world−1 has checked in with the same WORLD_SIZE, then publishes
// "ok <world>" (or the error) under fusion/ready.
void confirm_ranks(c10d::Store& store, const LaunchEnv& env, std::chrono::milliseconds timeout,
                   const std::string& where) {
  const auto deadline = Clock::now() + timeout;
  std::vector<bool> seen(static_cast<size_t>(env.world_size), false);
  seen[0] = true;
  auto fail = [&](const std::string& msg) {
    try {
      store.set("fusion/ready", bytes("error " + msg));
      // the server lives in this process: give the others a moment to read the verdict
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    } catch (...) {
    }
    FUSION_FAIL("rank 0: ", msg);
  };
  for (;;) {
    bool all = true;
    for (int r = 1; r < env.world_size; ++r) {
      if (seen[static_cast<size_t>(r)]) continue;
      const std::string key = "fusion/world/" + std::to_string(r);
      if (store.check({key})) {
        const std::string w = text(store.get(key));
        if (w != std::to_string(env.world_size))
          fail("rank " + std::to_string(r) + " has WORLD_SIZE=" + w + ", rank 0 has WORLD_SIZE=" +
               std::to_string(env.world_size) + ": every rank must be started with the same WORLD_SIZE");
        seen[static_cast<size_t>(r)] = true;
      } else {
        all = false;
      }
    }
    if (all) break;
    if (Clock::now() > deadline) {
      std::string missing;
      int n = 0;
      for (int r = 1; r < env.world_size; ++r)
        if (!seen[static_cast<size_t>(r)]) missing += (n++ ? ", " : "") + std::to_string(r);
      fail(std::string(n > 1 ? "ranks " : "rank ") + missing + " of WORLD_SIZE=" + std::to_string(env.world_size) +
           " did not join the rendezvous at " + where + " within " + seconds_text(timeout) +
           " (run.timeout_s): not started, or started with another MASTER_ADDR/MASTER_PORT or WORLD_SIZE");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  store.set("fusion/ready", bytes("ok " + std::to_string(env.world_size)));
}

// Ranks 1..: waits for rank 0's verdict.
void await_confirmation(c10d::Store& store, const LaunchEnv& env, std::chrono::milliseconds timeout,
                        const std::string& where) {
  const std::string me = "rank " + std::to_string(env.rank) + ": ";
  // Rank 0 gives its verdict within its own timeout of the start; allow for a later start of rank 0.
  const auto deadline = Clock::now() + 2 * timeout;
  std::string verdict;
  for (;;) {
    try {
      if (store.check({"fusion/ready"})) {
        verdict = text(store.get("fusion/ready"));
        break;
      }
    } catch (const std::exception& e) {
      FUSION_FAIL(me, "lost the rendezvous at ", where, " (rank 0 exited?): ", cause_of(e));
    }
    FUSION_ENSURE(Clock::now() < deadline, me, "rank 0 did not confirm the rendezvous at ", where, " within ",
                  seconds_text(2 * timeout));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (verdict.rfind("error ", 0) == 0) FUSION_FAIL(me, "the rendezvous failed on rank 0: ", verdict.substr(6));
  const std::string world = verdict.substr(3);
  FUSION_ENSURE(world == std::to_string(env.world_size), me, "WORLD_SIZE=", env.world_size,
                ", rank 0 has WORLD_SIZE=", world, ": every rank must be started with the same WORLD_SIZE");
}

}  // namespace

std::optional<LaunchEnv> read_launch_env() {
  const std::optional<int> world = env_int("WORLD_SIZE", 1, 1 << 20);
  if (!world || *world == 1) return std::nullopt;
  LaunchEnv env;
  env.world_size = *world;
  const std::optional<int> rank = env_int("RANK", 0, *world - 1);
  FUSION_ENSURE(rank.has_value(), "WORLD_SIZE=", *world, " but RANK is unset (set RANK to 0..", *world - 1, ")");
  env.rank = *rank;
  env.local_rank = env_int("LOCAL_RANK", 0, 1 << 20).value_or(env.rank);
  env.local_world_size = env_int("LOCAL_WORLD_SIZE", 1, 1 << 20).value_or(*world);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) env.master_addr = a;
  const std::optional<int> port = env_int("MASTER_PORT", 1, 65535);
  FUSION_ENSURE(port.has_value(), "WORLD_SIZE=", *world, " but MASTER_PORT is unset (the rendezvous port of rank 0)");
  env.master_port = *port;
  return env;
}

at::Device rank_cuda_device(const LaunchEnv& env) {
  int gpus = 0;
  try {
    gpus = at::detail::getCUDAHooks().getNumGPUs();
  } catch (...) {
  }
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(gpus > 0 ? env.local_rank % gpus : 0));
}

bool nccl_available() {
#if defined(FUSION_HAVE_NCCL)
  return true;
#else
  return false;
#endif
}

std::string resolved_backend(const ConnectOptions& options) {
  if (options.backend != "auto") return options.backend;
  return options.cuda_device && nccl_available() ? "nccl" : "gloo";
}

std::shared_ptr<Communicator> connect(const LaunchEnv& env, const ConnectOptions& options) {
  const std::string me = "rank " + std::to_string(env.rank) + ": ";
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port) + " (MASTER_ADDR:MASTER_PORT)";
  const std::string backend = resolved_backend(options);
  FUSION_ENSURE(backend == "gloo" || backend == "nccl", me, "run.backend: expected \"auto\", \"gloo\" or \"nccl\", got \"",
                backend, "\"");
  FUSION_ENSURE(backend != "nccl" || nccl_available(), me,
                "run.backend = \"nccl\", but this fusion was built without NCCL (LibTorch without CUDA): use \"gloo\"");
  FUSION_ENSURE(backend != "nccl" || options.cuda_device, me,
                "run.backend = \"nccl\" needs CUDA tensors: set run.device to \"cuda\" or use \"gloo\"");

  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.waitWorkers = false;
  so.timeout = options.timeout;
  c10::intrusive_ptr<c10d::TCPStore> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    if (env.rank == 0) FUSION_FAIL(me, "cannot listen for the rendezvous on ", where, ": ", cause_of(e));
    FUSION_FAIL(me, "cannot reach the rendezvous at ", where, " within ", seconds_text(options.timeout),
                " (run.timeout_s): ", cause_of(e));
  }
  try {
    const int64_t claims = store->add("fusion/rank/" + std::to_string(env.rank), 1);
    FUSION_ENSURE(claims == 1, me, "another process was started with RANK=", env.rank);
    if (env.rank == 0) {
      confirm_ranks(*store, env, options.timeout, where);
    } else {
      store->set("fusion/world/" + std::to_string(env.rank), bytes(std::to_string(env.world_size)));
      await_confirmation(*store, env, options.timeout, where);
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    FUSION_FAIL(me, "the rendezvous at ", where, " failed: ", cause_of(e));
  }

  c10::intrusive_ptr<c10d::ProcessGroup> pg;
  try {
    if (backend == "gloo") {
      auto o = c10d::ProcessGroupGloo::Options::create(options.timeout);
      o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(
          env.master_addr == "localhost" ? "127.0.0.1" : env.master_addr));
      o->threads = 1;
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(c10::make_intrusive<c10d::PrefixStore>("gloo", store),
                                                       env.rank, env.world_size, o);
    } else {
#if defined(FUSION_HAVE_NCCL)
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = options.timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(c10::make_intrusive<c10d::PrefixStore>("nccl", store),
                                                       env.rank, env.world_size, o);
#endif
    }
  } catch (const std::exception& e) {
    FUSION_FAIL(me, "cannot make the ", backend, " process group of ", env.world_size, " ranks: ", cause_of(e));
  }
  std::optional<at::Device> staging;
  if (backend == "nccl") staging = rank_cuda_device(env);
  return std::make_shared<C10dCommunicator>(store, pg, env.rank, env.world_size, backend, options.timeout, staging);
}

// ---------------------------------------------------------------------------------------------
// SIGINT / SIGTERM

namespace {

// What the watcher needs once a signal came, kept in fixed buffers: after the main thread is stopped
// (it may hold the allocator's or a logger's lock) only system calls run.
char g_run_dir[4096];
char g_log_file[4096];
char g_prefix[64];  // "rank R: " of a run over several processes, else ""
std::atomic<bool> g_cleanup_set{false};
std::atomic<bool> g_main_stopped{false};
pthread_t g_main_thread;
constexpr int kStopSignal = SIGUSR2;

int g_signal_pipe[2] = {-1, -1};

// SIGINT/SIGTERM, on whichever thread: the watcher reads the signal from the pipe.
void to_pipe(int sig) {
  const int saved = errno;
  const auto b = static_cast<unsigned char>(sig);
  [[maybe_unused]] const ssize_t n = ::write(g_signal_pipe[1], &b, 1);
  errno = saved;
}

// The main thread, on kStopSignal: stays where it is until the process exits.
void stop_here(int) {
  g_main_stopped.store(true);
  for (;;) ::pause();
}

void put(int fd, const char* s) {
  size_t n = std::strlen(s);
  while (n > 0) {
    const ssize_t w = ::write(fd, s, n);
    if (w <= 0) return;
    s += w;
    n -= static_cast<size_t>(w);
  }
}

bool is_hex_tail(const char* s, size_t n) {
  if (n != 8) return false;
  for (size_t i = 0; i < n; ++i)
    if (!std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  return true;
}

// "…tmp-XXXXXXXX" (random_suffix): a write_file_atomic / save_safetensors temporary file when the
// name starts with '.', a write_directory_atomic folder otherwise.
bool has_tmp_suffix(const char* name) {
  const size_t n = std::strlen(name);
  return n > 13 && std::memcmp(name + n - 13, ".tmp-", 5) == 0 && is_hex_tail(name + n - 8, 8);
}

// This process's own temporary names: the plot's ".pareto.svg.tmp<pid>.svg/.gp" and the write
// probe ".fusion_write_test.<pid>".
bool is_own_temporary(const char* name, const char* pid) {
  if (name[0] != '.') return false;
  char probe[64] = ".fusion_write_test.";
  std::strncat(probe, pid, sizeof probe - std::strlen(probe) - 1);
  if (std::strcmp(name, probe) == 0) return true;
  char tag[32] = ".tmp";
  std::strncat(tag, pid, sizeof tag - std::strlen(tag) - 1);
  std::strncat(tag, ".", sizeof tag - std::strlen(tag) - 1);
  return std::strstr(name, tag) != nullptr;
}

struct Dirent64 {
  uint64_t d_ino;
  int64_t d_off;
  unsigned short d_reclen;
  unsigned char d_type;
  char d_name[1];
};

bool is_dir_at(int dirfd, const char* name, unsigned char type) {
  if (type != DT_UNKNOWN) return type == DT_DIR;
  struct stat st;
  return ::fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
}

// Calls f(dirfd, name, type) for each entry of the open folder `fd` (not . and ..). Entries removed
// while listing may hide others from this pass: callers list again until a pass removes nothing.
template <class F>
void each_entry(int fd, F&& f) {
  alignas(8) char buf[4096];
  ::lseek(fd, 0, SEEK_SET);
  for (;;) {
    const long n = ::syscall(SYS_getdents64, fd, buf, sizeof buf);
    if (n <= 0) return;
    for (long off = 0; off < n;) {
      const auto* d = reinterpret_cast<const Dirent64*>(buf + off);
      off += d->d_reclen;
      if (std::strcmp(d->d_name, ".") == 0 || std::strcmp(d->d_name, "..") == 0) continue;
      f(d->d_name, d->d_type);
    }
  }
}

// rm -r of `name` in `dirfd` (symbolic links are removed, not followed).
void remove_tree(int dirfd, const char* name, int depth) {
  if (::unlinkat(dirfd, name, 0) == 0 || depth > 16) return;
  const int fd = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  for (int pass = 0; pass < 4; ++pass) {
    bool removed = false;
    each_entry(fd, [&](const char* child, unsigned char type) {
      if (is_dir_at(fd, child, type)) remove_tree(fd, child, depth + 1);
      else ::unlinkat(fd, child, 0);
      removed = true;
    });
    if (!removed) break;
  }
  ::close(fd);
  ::unlinkat(dirfd, name, AT_REMOVEDIR);
}

// Removes the temporary files and folders under the open folder `fd`, down to `depth` levels.
void remove_temporaries(int fd, const char* pid, int depth) {
  for (int pass = 0; pass < 4; ++pass) {
    bool removed = false;
    each_entry(fd, [&](const char* name, unsigned char type) {
      const bool dir = is_dir_at(fd, name, type);
      if ((has_tmp_suffix(name) && (dir || name[0] == '.')) || is_own_temporary(name, pid)) {
        if (dir) remove_tree(fd, name, 0);
        else ::unlinkat(fd, name, 0);
        removed = true;
      } else if (dir && depth > 0) {
        const int sub = ::openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub >= 0) {
          remove_temporaries(sub, pid, depth - 1);
          ::close(sub);
        }
      }
    });
    if (!removed) break;
  }
}

// The temporary files this process has open anywhere (a head cache, a head file outside the run folder).
void remove_open_temporaries() {
  const int fd = ::open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  each_entry(fd, [&](const char* name, unsigned char) {
    char target[4096];
    const ssize_t n = ::readlinkat(fd, name, target, sizeof target - 1);
    if (n <= 0) return;
    target[n] = '\0';
    if (target[0] != '/' || std::strstr(target, " (deleted)") != nullptr) return;
    const char* base = std::strrchr(target, '/') + 1;
    if (base[0] == '.' && has_tmp_suffix(base)) {
      ::unlink(target);
      return;
    }
    // a file inside a write_directory_atomic folder: the folder goes
    for (char* slash = std::strchr(target + 1, '/'); slash != nullptr; slash = std::strchr(slash + 1, '/')) {
      *slash = '\0';
      const char* component = std::strrchr(target, '/') + 1;
      if (component[0] != '.' && has_tmp_suffix(component)) {
        remove_tree(AT_FDCWD, target, 0);
        return;
      }
      *slash = '/';
    }
  });
  ::close(fd);
}

[[noreturn]] void on_interruption(int sig) {
  // Stop the main thread (where it is: in the middle of a write, a step or a collective), so that it
  // starts no new file while the temporary ones are removed.
  ::pthread_kill(g_main_thread, kStopSignal);
  for (int i = 0; i < 200 && !g_main_stopped.load(); ++i) ::usleep(5000);
  ::alarm(10);
  char pid[24];
  std::snprintf(pid, sizeof pid, "%ld", static_cast<long>(::getpid()));
  if (g_cleanup_set.load() && g_run_dir[0] != '\0') {
    const int fd = ::open(g_run_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      remove_temporaries(fd, pid, 4);
      ::close(fd);
    }
  }
  remove_open_temporaries();
  const char* name = sig == SIGINT ? "SIGINT" : "SIGTERM";
  char line[512];
  std::snprintf(line, sizeof line, "interrupted by %s: stopped; its temporary files were removed (exit status %d)\n",
                name, 128 + sig);
  if (::isatty(2)) put(2, "\r\x1b[K");  // a progress bar's line
  put(2, "fusion: error: ");
  put(2, g_prefix);
  put(2, line);
  if (g_cleanup_set.load() && g_log_file[0] != '\0') {
    const int fd = ::open(g_log_file, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
      char stamp[32] = "";
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      if (::localtime_r(&now, &tm)) std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S ", &tm);
      put(fd, stamp);
      put(fd, "error: ");
      put(fd, g_prefix);
      put(fd, line);
      ::close(fd);
    }
  }
  ::_exit(128 + sig);
}

// SIGINT and SIGTERM, but not one this process was started with ignored (a shell's background job
// ignores SIGINT; nohup-like wrappers): that one stays ignored, as it was.
sigset_t interruption_signals() {
  sigset_t set;
  sigemptyset(&set);
  for (const int sig : {SIGINT, SIGTERM}) {
    struct sigaction now {};
    if (::sigaction(sig, nullptr, &now) == 0 && now.sa_handler == SIG_IGN) continue;
    sigaddset(&set, sig);
  }
  return set;
}

}  // namespace

void watch_interruptions() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* world = std::getenv("WORLD_SIZE");
    const char* rank = std::getenv("RANK");
    if (world && rank && std::atoi(world) > 1)
      std::snprintf(g_prefix, sizeof g_prefix, "rank %d: ", std::atoi(rank));
    g_main_thread = ::pthread_self();
    struct sigaction sa {};
    sa.sa_handler = stop_here;
    sigemptyset(&sa.sa_mask);
    ::sigaction(kStopSignal, &sa, nullptr);
    const sigset_t set = interruption_signals();
    if (sigisemptyset(&set) || ::pipe2(g_signal_pipe, O_CLOEXEC) != 0) return;
    // Threads started before this one (OpenBLAS starts its workers when it is loaded) still take the
    // signals: a handler that only writes the signal's number to a pipe, whichever thread runs it.
    // This thread and those it starts block them (no system call of the run is interrupted); the
    // watcher takes them and reads the pipe.
    struct sigaction on {};
    on.sa_handler = to_pipe;
    on.sa_flags = SA_RESTART;
    sigemptyset(&on.sa_mask);
    for (const int sig : {SIGINT, SIGTERM})
      if (sigismember(&set, sig)) ::sigaction(sig, &on, nullptr);
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    std::thread([set] {
      ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
      for (;;) {
        unsigned char sig = 0;
        if (::read(g_signal_pipe[0], &sig, 1) == 1 && (sig == SIGINT || sig == SIGTERM)) on_interruption(sig);
      }
    }).detach();
  });
}

void set_interruption_cleanup(const fs::path& run_dir, const fs::path& log_file) {
  g_cleanup_set.store(false);
  std::error_code ec;
  const fs::path dir = run_dir.empty() ? run_dir : fs::absolute(run_dir, ec);
  const fs::path log = log_file.empty() ? log_file : fs::absolute(log_file, ec);
  std::snprintf(g_run_dir, sizeof g_run_dir, "%s", dir.c_str());
  std::snprintf(g_log_file, sizeof g_log_file, "%s", log.c_str());
  g_cleanup_set.store(true);
}

// ---------------------------------------------------------------------------------------------
// fusion run --nproc N

namespace {

// A port of the loopback that is free now (the kernel's choice for port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  FUSION_ENSURE(fd >= 0, "--nproc: cannot open a socket to find a free port: ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  const int err = errno;
  ::close(fd);
  FUSION_ENSURE(ok, "--nproc: cannot find a free port on 127.0.0.1: ", std::strerror(err));
  return ntohs(a.sin_port);
}

}  // namespace

int launch_local(int nproc, const std::vector<std::string>& child_args) {
  FUSION_ENSURE(nproc >= 1 && nproc <= 1024, "--nproc ", nproc, ": expected 1 to 1024 ranks");
  const char* addr = std::getenv("MASTER_ADDR");
  const std::string master_addr = addr && *addr ? addr : "127.0.0.1";
  const char* port_env = std::getenv("MASTER_PORT");
  const std::string master_port = port_env && *port_env ? port_env : std::to_string(free_port());
  std::vector<std::string> args = child_args;
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(nullptr);
  // SIGINT/SIGTERM are taken with sigtimedwait below and passed on to the ranks; each rank gets
  // back the mask this process had.
  const sigset_t signals = interruption_signals();
  sigset_t before;
  ::pthread_sigmask(SIG_BLOCK, &signals, &before);
  std::map<pid_t, int> running;  // pid → rank
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      for (const auto& [p, _] : running) ::kill(p, SIGKILL);
      FUSION_FAIL("--nproc: cannot start rank ", r, ": ", std::strerror(errno));
    }
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", master_port.c_str(), 1);
      ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::fprintf(stderr, "fusion: error: rank %d: cannot start /proc/self/exe: %s\n", r, std::strerror(errno));
      std::_Exit(127);
    }
    running[pid] = r;
  }
  int result = 0;
  int interrupted = 0;  // the signal this process got
  std::optional<Clock::time_point> kill_at;
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid < 0 && errno != EINTR) break;
    if (pid <= 0) {
      if (kill_at && Clock::now() > *kill_at) {
        for (const auto& [p, _] : running) ::kill(p, SIGKILL);
        kill_at.reset();
      }
      const timespec wait{0, 20 * 1000 * 1000};
      const int sig = ::sigtimedwait(&signals, nullptr, &wait);
      if ((sig == SIGINT || sig == SIGTERM) && !interrupted) {
        // Ctrl-C reached the ranks too (one process group), unless they ignore SIGINT; a SIGTERM to
        // this process did not. SIGTERM stops them either way.
        interrupted = sig;
        result = 128 + sig;
        for (const auto& [p, _] : running) ::kill(p, SIGTERM);
        kill_at = Clock::now() + std::chrono::seconds(5);
      }
      continue;
    }
    auto it = running.find(pid);
    if (it == running.end()) continue;
    const int rank = it->second;
    running.erase(it);
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (code == 0 || result != 0) continue;
    result = code;
    if (WIFSIGNALED(status))
      std::fprintf(stderr, "fusion: error: rank %d was killed by signal %d (%s); stopping the other ranks\n", rank,
                   WTERMSIG(status), strsignal(WTERMSIG(status)));
    else if (!running.empty())
      std::fprintf(stderr, "fusion: rank %d exited with status %d; stopping the other ranks\n", rank, code);
    for (const auto& [p, _] : running) ::kill(p, SIGTERM);
    kill_at = Clock::now() + std::chrono::seconds(5);
  }
  ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
  return result;
}

}  // namespace fusion::host
