# The Debian package: `cpack -G DEB` in the build folder (scripts/package-deb.sh) makes
# fusion_<version>_amd64.deb with the host, the plugins, the SDK and model-family libraries, their
# headers and the CMake package, under /usr. Depends comes from dpkg-shlibdeps (the shared libraries
# the binaries link: LibTorch, Boost, GLPK, ...); Recommends adds what building a plugin against the
# SDK needs (find_package(Fusion) finds Torch and nlohmann_json) and the plot and BLAS packages, so
# `apt install ./fusion_*.deb` gives a working SDK and `--no-install-recommends` a runtime only.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME fusion)
set(CPACK_PACKAGE_VENDOR "fusion")
set(CPACK_PACKAGE_CONTACT "fusion developers <fusion@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "model-merging host and SDK on LibTorch (PWEMoE, task arithmetic, TIES)")
set(CPACK_PACKAGE_DESCRIPTION
  "fusion loads model-merging methods as plugins and compares them on the same models and tasks:
PWEMoE-LS and PWEMoE-EPO beside task arithmetic, TIES-merging, simple and weighted averaging.
The package holds the fusion binary, its plugins, the SDK and CLIP model-family libraries with
their headers, and the CMake package (find_package(Fusion)) for building plugins.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)             # fusion_<version>_<arch>.deb
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS
  "libtorch-dev, nlohmann-json3-dev, cmake, g++, gnuplot-nox, libopenblas0-pthread")
include(CPack)
