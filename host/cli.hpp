#pragma once
// The `fusion` command line.

namespace fusion::host {

/// Exit codes: 0 success, 1 a failed command (one line `fusion: error: ...` on stderr),
/// 2 a usage error (unknown subcommand or option, missing argument).
int cli_main(int argc, char** argv);

}  // namespace fusion::host
