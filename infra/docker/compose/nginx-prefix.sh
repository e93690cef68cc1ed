#!/bin/sh
# nginx.conf.template keeps temp files and logs relative to the prefix (-p /var/cache/nginx/).
set -eu
mkdir -p /var/cache/nginx/tmp /var/cache/nginx/logs
