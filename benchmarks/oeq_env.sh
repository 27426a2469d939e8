# Source this before `check_backends.py --backends openequivariance` on a GPU machine that cannot reach the network
# (how benchmarks/RESULTS.md's OpenEquivariance figures were taken: torch from pip, a CUDA toolkit in /usr/local/cuda).
#
#     source benchmarks/oeq_env.sh SITE
#
# SITE: a folder holding the `openequivariance` package (0.7.0, its sdist's source tree: no build step) and what
# its JIT build needs beyond torch (pybind11, jinja2, markupsafe, and the ninja binary in SITE/bin). At import,
# OpenEquivariance compiles its C++ extension with torch.utils.cpp_extension (g++) against the CUDA driver, runtime,
# NVRTC and cuBLAS headers and libraries; this gathers those of torch's pip packages and of /usr/local/cuda* into one
# CUDA_HOME with the unversioned library names the linker wants.

SITE=${1:?usage: source benchmarks/oeq_env.sh SITE}
CUDA_HOME=${OEQ_CUDA_HOME:-/tmp/oeq_cuda_home}
mkdir -p "$CUDA_HOME/include" "$CUDA_HOME/lib64"
NVIDIA=$(python -c "import nvidia; print(list(nvidia.__path__)[0])")
for d in $(find "$NVIDIA" /usr/local/cuda* -maxdepth 3 -type d -name include 2>/dev/null); do cp -rsn "$d/." "$CUDA_HOME/include/"; done
for d in $(find "$NVIDIA" /usr/local/cuda* -maxdepth 3 -type d \( -name lib -o -name lib64 \) 2>/dev/null); do
  for f in "$d"/*.so*; do
    [ -e "$f" ] || continue
    b=$(basename "$f")
    ln -sf "$f" "$CUDA_HOME/lib64/$b"
    ln -sf "$f" "$CUDA_HOME/lib64/${b%%.so*}.so"  # the linker's -lcudart etc. want the unversioned name
  done
done
for f in /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib64/libcuda.so.1; do
  [ -e "$f" ] && ln -sf "$f" "$CUDA_HOME/lib64/libcuda.so"
done
export CUDA_HOME LIBRARY_PATH="$CUDA_HOME/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
export PATH="$SITE/bin:$PATH" PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" OEQ_JIT_EXTENSION=1
