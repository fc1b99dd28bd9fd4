{{/* Chart name, truncated to fit label values. */}}
{{- define "kabar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name: release-chart unless the release name already contains the chart's. */}}
{{- define "kabar.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kabar.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{- define "kabar.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kabar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kabar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kabar.labels" -}}
helm.sh/chart: {{ include "kabar.chart" . }}
{{ include "kabar.selectorLabels" . }}
app.kubernetes.io/version: {{ include "kabar.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kabar
{{- end }}

{{- define "kabar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kabar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kabar.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "kabar.image" -}}
{{- $repository := .Values.image.repository }}
{{- /* A repository that starts with a registry host (a dot, a port or localhost in its first
part, as docker reads names) is a whole name already: values written before
image.registry existed keep working. */}}
{{- $first := first (splitList "/" $repository) }}
{{- $hasRegistry := and (contains "/" $repository) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- if and .Values.image.registry (not $hasRegistry) }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .Values.image.registry) $repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (include "kabar.imageTag" .) }}
{{- end }}
{{- end }}

{{/* "true" when kabar serves HTTPS: a TLS Secret to mount, or server.tls in config. */}}
{{- define "kabar.tlsEnabled" -}}
{{- $server := default dict .Values.config.server }}
{{- if or .Values.tls.existingSecret $server.tls }}true{{ end }}
{{- end }}

{{- define "kabar.scheme" -}}
{{- ternary "https" "http" (eq (include "kabar.tlsEnabled" .) "true") }}
{{- end }}

{{- define "kabar.tlsDir" -}}
/etc/kabar-secrets/tls
{{- end }}

{{/* The Secret that holds kabar.yaml: the chart's own or an existing one. */}}
{{- define "kabar.configSecretName" -}}
{{- default (printf "%s-config" (include "kabar.fullname" .)) .Values.existingConfigSecret.name }}
{{- end }}

{{/* The Secret holding the inbound bearer token, empty when there is none. */}}
{{- define "kabar.authSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else if .Values.auth.bearerToken }}
{{- printf "%s-auth" (include "kabar.fullname" .) }}
{{- end }}
{{- end }}

{{- define "kabar.authSecretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* Where mounted secret files live; kept apart from the config Secret's own mount. */}}
{{- define "kabar.tokenFile" -}}
/etc/kabar-secrets/auth/token
{{- end }}

{{/* "true" when the store is PostgreSQL (store.postgres.existingSecret): several replicas. */}}
{{- define "kabar.postgres" -}}
{{- $store := default dict .Values.store }}
{{- $postgres := default dict $store.postgres }}
{{- if $postgres.existingSecret }}true{{ end }}
{{- end }}

{{- define "kabar.postgresUrlFile" -}}
/etc/kabar-secrets/postgres/url
{{- end }}

{{/* Replicas: as set; unset, 2 on PostgreSQL (one may go while the other sends) and 1 on SQLite. */}}
{{- define "kabar.replicas" -}}
{{- if kindIs "invalid" .Values.replicas }}
{{- ternary 2 1 (eq (include "kabar.postgres" .) "true") }}
{{- else }}
{{- .Values.replicas }}
{{- end }}
{{- end }}

{{/* The budget: as set; unset, on for PostgreSQL and off for SQLite's single pod. */}}
{{- define "kabar.pdbEnabled" -}}
{{- if kindIs "invalid" .Values.podDisruptionBudget.enabled }}
{{- if eq (include "kabar.postgres" .) "true" }}true{{ end }}
{{- else if .Values.podDisruptionBudget.enabled }}true{{ end }}
{{- end }}

{{/* The Chat events path kabar serves: config.chat_app.events_path (default /chat/events)
when config.chat_app.project_number turns events on, else empty. */}}
{{- define "kabar.eventsPath" -}}
{{- $chatApp := default dict (default dict .Values.config).chat_app }}
{{- if $chatApp.project_number }}
{{- default "/chat/events" $chatApp.events_path }}
{{- end }}
{{- end }}

{{/* Fails unless every Ingress path is the webhook (/alerts, /alerts/SPACE) or the Chat
events path: /metrics, /-/reload and the landing page must stay inside the cluster. */}}
{{- define "kabar.checkIngressPaths" -}}
{{- $events := include "kabar.eventsPath" . }}
{{- $allowed := "/alerts, /alerts/SPACE" }}
{{- if $events }}
{{- $allowed = printf "%s, %s (config.chat_app.events_path)" $allowed $events }}
{{- else }}
{{- $allowed = printf "%s (and config.chat_app.events_path, default /chat/events, once config.chat_app.project_number is set)" $allowed }}
{{- end }}
{{- range $h, $host := .Values.ingress.hosts }}
{{- range $p, $entry := $host.paths }}
{{- if not (or (regexMatch "^/alerts(/[A-Za-z0-9_.-]*)?$" $entry.path) (and $events (eq $entry.path $events))) }}
{{- fail (printf "ingress.hosts[%d].paths[%d].path %s is not exposed by the chart: the Ingress allows only %s" $h $p $entry.path $allowed) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret with the credentials kabar sends to Alertmanager for Silence buttons. */}}
{{- define "kabar.amSecretDir" -}}
/etc/kabar-secrets/alertmanager
{{- end }}

{{- define "kabar.webhookFile" -}}
{{- printf "/etc/kabar-secrets/webhooks/%s/webhook_url" . }}
{{- end }}

{{/*
kabar.yaml rendered from .Values.config: the chart sets listen, state_dir and, with
store.postgres.existingSecret, store.postgres (url_file on the mounted Secret key); it points
webhookSecrets' spaces at their mounted files and the auth token at its file. Conflicting
settings fail the render rather than letting kabar pick one.
*/}}
{{- define "kabar.config" -}}
{{- $config := deepCopy (default dict .Values.config) }}
{{- range $key := list "listen" "state_dir" }}
{{- if hasKey $config $key }}
{{- fail (printf "config.%s is set by the chart; remove it from values" $key) }}
{{- end }}
{{- end }}
{{- $_ := set $config "listen" "0.0.0.0:9095" }}
{{- $_ := set $config "state_dir" "/var/lib/kabar" }}
{{- if hasKey $config "store" }}
{{- fail "config.store is set by the chart; use store.postgres.existingSecret (and key, maxConnections, lease)" }}
{{- end }}
{{- if eq (include "kabar.postgres" .) "true" }}
{{- $postgres := .Values.store.postgres }}
{{- $settings := dict "url_file" (include "kabar.postgresUrlFile" .) "max_connections" (int $postgres.maxConnections) "lease" $postgres.lease }}
{{- if $postgres.caSecret }}
{{- $_ := set $settings "ca_file" "/etc/kabar-secrets/postgres-ca/ca.crt" }}
{{- end }}
{{- $_ := set $config "store" (dict "postgres" $settings) }}
{{- end }}
{{- if include "kabar.authSecretName" . }}
{{- if $config.auth }}
{{- fail "set either config.auth or auth.bearerToken/auth.existingSecret, not both" }}
{{- end }}
{{- $_ := set $config "auth" (dict "bearer_token_file" (include "kabar.tokenFile" .)) }}
{{- else if not $config.auth }}
{{- $_ := unset $config "auth" }}
{{- end }}
{{- $amSecret := .Values.chatApp.alertmanager }}
{{- if $amSecret.existingSecret }}
{{- $chatApp := default dict $config.chat_app }}
{{- $am := $chatApp.alertmanager }}
{{- if not $am }}
{{- fail "chatApp.alertmanager.existingSecret holds Alertmanager's credentials for Silence buttons: set config.chat_app.alertmanager.url too" }}
{{- end }}
{{- range $key := list "bearer_token" "bearer_token_file" "basic" }}
{{- if and (hasKey $am $key) (not (and (eq $key "basic") $amSecret.passwordKey)) }}
{{- fail (printf "set either config.chat_app.alertmanager.%s or chatApp.alertmanager.existingSecret, not both" $key) }}
{{- end }}
{{- end }}
{{- if eq (not $amSecret.bearerTokenKey) (not $amSecret.passwordKey) }}
{{- fail "chatApp.alertmanager.existingSecret: set exactly one of bearerTokenKey and passwordKey" }}
{{- end }}
{{- if $amSecret.bearerTokenKey }}
{{- $_ := set $am "bearer_token_file" (printf "%s/token" (include "kabar.amSecretDir" .)) }}
{{- else }}
{{- $basic := default dict $am.basic }}
{{- if not $basic.username }}
{{- fail "chatApp.alertmanager.passwordKey is a basic-auth password: set config.chat_app.alertmanager.basic.username" }}
{{- end }}
{{- if or (hasKey $basic "password") (hasKey $basic "password_file") }}
{{- fail "set either config.chat_app.alertmanager.basic.password/password_file or chatApp.alertmanager.passwordKey, not both" }}
{{- end }}
{{- $_ := set $basic "password_file" (printf "%s/password" (include "kabar.amSecretDir" .)) }}
{{- $_ := set $am "basic" $basic }}
{{- end }}
{{- end }}
{{- if .Values.tls.existingSecret }}
{{- $server := default dict $config.server }}
{{- if $server.tls }}
{{- fail "set either config.server.tls or tls.existingSecret, not both" }}
{{- end }}
{{- $_ := set $server "tls" (dict "cert_file" (printf "%s/tls.crt" (include "kabar.tlsDir" .)) "key_file" (printf "%s/tls.key" (include "kabar.tlsDir" .))) }}
{{- $_ := set $config "server" $server }}
{{- end }}
{{- range $key := list "delivery" "defaults" "server" }}
{{- if not (get $config $key) }}
{{- $_ := unset $config $key }}
{{- end }}
{{- end }}
{{- $spaces := default dict $config.spaces }}
{{- range $space, $ref := .Values.webhookSecrets }}
{{- $entry := default dict (get $spaces $space) }}
{{- if or (hasKey $entry "webhook_url") (hasKey $entry "dry_run") }}
{{- fail (printf "space %s: webhookSecrets.%s gives its webhook URL; remove webhook_url/dry_run from config.spaces.%s" $space $space $space) }}
{{- end }}
{{- $_ := set $entry "webhook_url_file" (include "kabar.webhookFile" $space) }}
{{- $_ := set $spaces $space $entry }}
{{- end }}
{{- if not $spaces }}
{{- /* kabar needs a space to start: a dry run that only logs, until spaces are configured. */}}
{{- $_ := set $spaces "demo" (dict "dry_run" true "receivers" (list "kabar")) }}
{{- end }}
{{- $_ := set $config "spaces" $spaces }}
{{- toYaml $config }}
{{- end }}
