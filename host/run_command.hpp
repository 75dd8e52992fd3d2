#pragma once
// `fusion run`: one merging run from a TOML config, written to its run directory.
#include <memory>
#include <string>

#include "fusion/context.hpp"
#include "run_config.hpp"

namespace fusion::host {

/// Runs the whole pipeline, in five stages (run_command.cpp reads top-down):
/// 1. resolve the config: file and overrides, plugins, each section checked against its component,
///    the run directory with its log and the resolved config.toml;
/// 2. instantiate the components, and check the method's requirements before any weight is read;
/// 3. execute the method (Algorithm::run);
/// 4. evaluate the models: make, evaluate, save and drop each in turn;
/// 5. write the reports: results.csv, pareto.svg, report.json (last, atomically).
/// Throws fusion::Error (or another std::exception) on any failure; outputs written before the
/// failure stay, but report.json is only ever written complete.
void run(const RunRequest& request, const std::shared_ptr<Logger>& logger);

/// A label made safe as a folder name: characters other than letters, digits, '.', '_', '-' and
/// '=' become '_'; "" becomes "model".
std::string sanitize_label(const std::string& label);

}  // namespace fusion::host
