// The `fusion` executable: see cli.hpp.
#include "cli.hpp"

int main(int argc, char** argv) { return fusion::host::cli_main(argc, argv); }
