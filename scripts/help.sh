# The -h/--help of the project's shell scripts. Each sources it first thing, right after
# finding the repository root:  . "$ROOT/scripts/help.sh"
# With -h or --help as the first argument, it prints the calling script's header comment
# (its usage) and exits with status 0, before anything runs or any folder is made; with
# any other arguments it does nothing.
# Usage: sh scripts/help.sh --help    (prints this text)
case "${1-}" in
-h | --help)
	while IFS= read -r line; do
		case $line in
		'#!'*) ;;
		'#'*)
			line=${line#\#}
			printf '%s\n' "${line# }"
			;;
		*) break ;;
		esac
	done <"$0"
	exit 0
	;;
esac
