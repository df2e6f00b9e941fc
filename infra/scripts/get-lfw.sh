#!/usr/bin/env bash
# Downloads LFW deep-funneled and its pairs files into $FACEREC_DATASETS (default ../shared/datasets).
# Only for machines with internet: the project reads LFW from that folder and never downloads at run time.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
dest=${FACEREC_DATASETS:-$repo/../shared/datasets}
site=${LFW_MIRROR:-http://vis-www.cs.umass.edu/lfw}
if [ -d "$dest/lfw-deepfunneled" ]; then
  echo "LFW already in $dest/lfw-deepfunneled"
  exit 0
fi
mkdir -p "$dest/lfw-meta"
curl -fL "$site/lfw-deepfunneled.tgz" | tar -xz -C "$dest"
for f in pairs.txt pairsDevTrain.txt pairsDevTest.txt people.txt peopleDevTrain.txt peopleDevTest.txt lfw-names.txt README.txt; do
  curl -fL -o "$dest/lfw-meta/$f" "$site/$f"
done
echo "LFW in $dest"
