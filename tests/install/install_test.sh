#!/usr/bin/env bash
# Installs keel from the build tree into a scratch prefix, then configures, builds and runs a separate project that
# finds it with find_package(keel). Args: <keel build dir> <consumer source dir> <scratch dir> <c++ flags> <linker flags>
set -euo pipefail
build="$1" consumer="$2" scratch="$3" cxxflags="$4" ldflags="$5"
rm -rf "$scratch"
cmake --install "$build" --prefix "$scratch/prefix" > "$scratch.install.log" 2>&1 || { cat "$scratch.install.log"; exit 1; }
test -f "$scratch/prefix/include/keel/event_store.hpp"
test ! -e "$scratch/prefix/include/keel/../sqlite3.h"
cmake -S "$consumer" -B "$scratch/build" -G Ninja -DCMAKE_PREFIX_PATH="$scratch/prefix" \
      -DCMAKE_CXX_FLAGS="$cxxflags" -DCMAKE_EXE_LINKER_FLAGS="$ldflags"
cmake --build "$scratch/build"
out=$("$scratch/build/consumer")
echo "$out"
[[ "$out" == *'consumer read Said {"text":"hello"}'* ]]
