#!/usr/bin/env bash
# The system programs the test suite uses beside its venv:  bash scripts/system-deps.sh
#
#   redis-server   a Redis for the tests when none answers on 127.0.0.1:6379 (scripts/test.sh starts it)
#   chromium       the jobs page's browser test (tests/e2e/test_jobs_page.py)
#   nginx          a proxy with a body limit in front of Label Studio (tests/e2e/test_proxy_limit_e2e.py)
#   dockerd, debootstrap, `docker compose`   the Docker image test (tests/test_docker_image.py) and the
#                  compose check (tests/test_docker.py)
#
# Whatever is missing is installed with apt-get when this runs as root on Debian. Debian 12 (bookworm) has
# only Compose v1; there the v2 plugin comes from Debian 13's docker-compose package (a Go binary that needs
# nothing but libc), fetched with apt into a private list directory, so the system's sources stay as they
# are. Elsewhere one line per missing program says what to install, and the tests that need it fail saying so.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
docker compose version >/dev/null 2>&1 || missing+=(compose)
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || [ ! -f /etc/debian_version ]; then
    for name in "${missing[@]}"; do
        case "$name" in
            compose) echo "[system-deps] missing: the Docker Compose v2 plugin (\`docker compose\`)" ;;
            *) echo "[system-deps] missing: $name (Debian package $name)" ;;
        esac
    done
    exit 0
fi

apt_packages=()
for name in "${missing[@]}"; do [ "$name" != compose ] && apt_packages+=("$name"); done
# docker.io ships the docker CLI, which `docker compose` needs as well.
if [[ " ${missing[*]} " == *" compose "* ]] && ! command -v docker >/dev/null 2>&1; then apt_packages+=(docker.io); fi
echo "[system-deps] installing with apt-get: ${missing[*]}"
apt-get update -qq
if [ "${#apt_packages[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

if [[ " ${missing[*]} " == *" compose "* ]]; then
    compose_major=$(apt-cache policy docker-compose | awk '/Candidate:/ {print substr($2, 1, 1)}')
    if [ "${compose_major:-1}" -ge 2 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
    else
        private=$(mktemp -d) && chmod 755 "$private"  # readable by apt's _apt user
        trap 'rm -rf "$private"' EXIT
        mkdir -p "$private/lists/partial" "$private/cache/archives/partial" "$private/deb"
        echo "deb http://deb.debian.org/debian trixie main" >"$private/sources.list"
        apt_private=(-o "Dir::Etc::SourceList=$private/sources.list" -o Dir::Etc::SourceParts=/dev/null
                     -o "Dir::State::Lists=$private/lists" -o "Dir::Cache=$private/cache")
        apt-get "${apt_private[@]}" update -qq
        (cd "$private/deb" && apt-get "${apt_private[@]}" download -qq docker-compose 2>/dev/null)
        dpkg -i "$private"/deb/docker-compose_*.deb >/dev/null
    fi
fi
docker compose version >/dev/null 2>&1 || echo "[system-deps] \`docker compose\` still does not run" >&2
