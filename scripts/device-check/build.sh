#!/usr/bin/env bash
# Builds the device check bundle, device-check/ at the repository root: what a GPU machine without Java needs to run
# Kindling's device tests and benches (run.sh there). It holds the Kindling jars and only the runtime jars of the
# device path (no Spark, Hadoop or Arrow: the data-prep side is left out), the test classes and JUnit's console
# launcher, a jlink'ed JRE with the JDK modules those jars use, the model presets and the PyTorch peer scripts.
#
#   scripts/device-check/build.sh [--skip-package]
#
# --skip-package assembles from the jars a previous `mvn package` left in */target.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/scripts/device-check"
DEST="$ROOT/device-check"
CP_FILE=target/runtime-classpath.txt

case "${1:-}" in
  "") (cd "$ROOT" && mvn -B -q -DskipTests package dependency:build-classpath -DincludeScope=runtime \
        -Dmdep.outputFile="$CP_FILE") ;;
  --skip-package) ;;
  *) echo "build.sh: unknown option $1 (usage: build.sh [--skip-package])" >&2; exit 2 ;;
esac

# The device path: gpu-ops, models and any device provider module (cuda-ops) with the CLI; data-prep is the corpus side.
MODULES=()
for m in gpu-ops cuda-ops models spark-jobs; do
  [ -d "$ROOT/$m" ] && MODULES+=("$m")
done

module_jar() {
  local jar
  jar=$(ls "$ROOT/$1"/target/kindling-"$1"-*.jar 2>/dev/null | grep -v -e '-all\.jar$' -e '-sources\.jar$' -e '-tests\.jar$' | head -n 1)
  [ -n "$jar" ] || { echo "build.sh: no jar in $1/target: run without --skip-package" >&2; exit 1; }
  echo "$jar"
}

classpath_of() {
  [ -f "$ROOT/$1/$CP_FILE" ] || { echo "build.sh: $1/$CP_FILE is missing: run without --skip-package" >&2; exit 1; }
  tr ':' '\n' < "$ROOT/$1/$CP_FILE" | grep -v '^$' || true
}

# spark-jobs' runtime jars (Spark and Hadoop are `provided` there), minus those only data-prep brings.
device_deps=$(for m in "${MODULES[@]}"; do [ "$m" = spark-jobs ] || classpath_of "$m"; done | sort -u)
prep_only=$(comm -23 <(classpath_of data-prep | sort -u) <(echo "$device_deps"))
jars=$(comm -23 <(classpath_of spark-jobs | sort -u) <(echo "$prep_only") | grep -v '/kindling-[a-z-]*-[0-9][^/]*\.jar$' || true)

rm -rf "$DEST"
mkdir -p "$DEST/lib" "$DEST/tests" "$DEST/conf/models" "$DEST/peers"
for m in "${MODULES[@]}"; do
  cp "$(module_jar "$m")" "$DEST/lib/"
done
for j in $jars; do
  cp "$j" "$DEST/lib/"
done
# Kindling loads its kernels through the driver API alone: JCuda's NVRTC and PTX-compiler bindings (24 MB of the
# natives) never load, and dropping them keeps the bundle inside the device tool's 64 MiB carry.
for n in "$DEST"/lib/jcuda-natives-*.jar; do
  # zip exits 12 when nothing matched: a natives jar without those libraries is fine as it is.
  [ -f "$n" ] && { zip -q -d "$n" 'lib/libJNvPTXCompiler-*' 'lib/libJNvrtc-*' || [ $? = 12 ]; }
done
if ls "$DEST/lib" | grep -q -e '^spark-' -e '^hadoop-' -e '^arrow-' -e '^scala-'; then
  echo "build.sh: Spark, Hadoop, Arrow or Scala jars reached the bundle:" $(ls "$DEST/lib" | grep -e '^spark-' -e '^hadoop-' -e '^arrow-' -e '^scala-') >&2
  exit 1
fi

# Test classes of the device modules (the GPU-tagged tests live there) and the launcher that runs them.
for m in "${MODULES[@]}"; do
  [ "$m" = spark-jobs ] && continue
  if [ -d "$ROOT/$m/target/test-classes" ]; then
    jar --create --file "$DEST/tests/kindling-$m-tests.jar" -C "$ROOT/$m/target/test-classes" .
  fi
done
# JUnit Jupiter 5.x ships with Platform 1.x.
JUNIT_PLATFORM=$(grep -A1 '<artifactId>junit-bom</artifactId>' "$ROOT/pom.xml" | sed -n 's/.*<version>5\.\(.*\)<\/version>.*/1.\1/p')
[ -n "$JUNIT_PLATFORM" ] || { echo "build.sh: cannot read the junit-bom version from pom.xml" >&2; exit 1; }
(cd "$ROOT" && mvn -B -q -N dependency:copy -Dartifact="org.junit.platform:junit-platform-console-standalone:$JUNIT_PLATFORM" \
    -DoutputDirectory="$DEST/tests")

cp "$ROOT"/conf/models/*.yaml "$DEST/conf/models/"
cp "$ROOT"/peers/*.py "$DEST/peers/"
cp "$HERE/run.sh" "$HERE/kindling" "$DEST/"

# The JRE: the JDK modules the jars use, as jdeps finds them, plus two it cannot see: the Vector API, which netlib
# and the CPU backend reach reflectively, and jdk.zipfs, the jar file system provider with which JUnit scans the
# test jars (without it the launcher finds no tests and only warns). Less java.desktop: jdeps finds it for commons-math3's 2-D geometry (java.awt.geom), which
# JTransforms, its only user here, never loads, and for jackson-databind's optional java.beans annotations (`requires
# static`; it looks them up reflectively and does without). It would make the JRE 11 MB larger, and the device tool
# carries 64 MiB at most. (jdeps warns of a split package for every package two jars share: JUnit's console jar and
# its parts; those warnings are dropped.)
modules=$( (jdeps --print-module-deps --ignore-missing-deps --multi-release 17 "$DEST"/lib/*.jar "$DEST"/tests/*.jar \
    2> >(grep -v '^Warning: split package' >&2) | tr ',' '\n'
  echo jdk.incubator.vector; echo jdk.zipfs) | grep -v -x -e java.desktop -e '' | sort -u | paste -sd, -)
JMODS="$(dirname "$(dirname "$(readlink -f "$(command -v jlink)")")")/jmods"
jlink --module-path "$JMODS" --add-modules "$modules" --strip-debug --no-header-files --no-man-pages --compress=2 --output "$DEST/jre"
echo "$modules" > "$DEST/jre-modules.txt"

# Kindling's JVM flags, less --add-opens of modules this JRE does not have (the JVM would warn about each).
flags=$(sed -n 's/^jvm.flags=//p' "$ROOT/spark-jobs/target/classes/org/kindling/cli/build.properties")
keep=()
for f in $flags; do
  case "$f" in
    --add-opens=*) mod="${f#--add-opens=}"; mod="${mod%%/*}"
      [[ ",$modules,java.base," == *",$mod,"* ]] && keep+=("$f") ;;
    *) keep+=("$f") ;;
  esac
done
echo "${keep[*]}" > "$DEST/jvm.flags"

echo "device-check: $(du -sh "$DEST" | cut -f1) ($(du -sh "$DEST/jre" | cut -f1) JRE), modules $modules" >&2
