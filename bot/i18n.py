"""Every sentence the bot writes to members, in French and in English.

A message exists in both languages or not at all: a test checks that no key is missing
in either, so a room never gets a mixed-language answer.
"""

from __future__ import annotations

# Every language the bot speaks, the first one first in lists shown to people.
LANGUAGES = ("fr", "en")

MESSAGES: dict[str, dict[str, str]] = {
    "untitled": {"en": "(untitled)", "fr": "(sans titre)"},
    "read_more": {"en": "Read more", "fr": "Lire la suite"},
    "by_author": {"en": "by {author}", "fr": "par {author}"},
    "help": {
        "en": "newsbot posts every new item of this room's feeds here.\n"
              "For everyone:\n"
              "  {p} list: this room's feeds\n"
              "  {p} latest [n]: the newest n items\n"
              "  {p} status: when each feed was fetched and will be next\n"
              "  {p} archive [n]: the last n issues\n"
              "  {p} stats: how many people read each feed (counted, never listed)\n"
              "For moderators (power level {level}):\n"
              "  {p} add URL [name]: follow a feed in this room\n"
              "  {p} remove NAME\n"
              "  {p} pause NAME / {p} resume NAME\n"
              "  {p} interval NAME 30m\n"
              "  {p} filter NAME include|exclude WORDS / {p} filter NAME clear\n"
              "  {p} lang fr|en: the language I use in this room",
        "fr": "newsbot publie ici chaque nouvel article des flux de ce salon.\n"
              "Pour tout le monde :\n"
              "  {p} list : les flux de ce salon\n"
              "  {p} latest [n] : les n derniers articles\n"
              "  {p} status : quand chaque flux a été lu et le sera de nouveau\n"
              "  {p} archive [n] : les n derniers numéros\n"
              "  {p} stats : combien de personnes lisent chaque flux (comptées, jamais "
              "listées)\n"
              "Pour les modérateur·ices (niveau de pouvoir {level}) :\n"
              "  {p} add URL [nom] : suivre un flux dans ce salon\n"
              "  {p} remove NOM\n"
              "  {p} pause NOM / {p} resume NOM\n"
              "  {p} interval NOM 30m\n"
              "  {p} filter NOM include|exclude MOTS / {p} filter NOM clear\n"
              "  {p} lang fr|en : la langue que j’utilise dans ce salon",
    },
    "unknown_command": {
        "en": "I don’t know “{command}”. Try “{p} help”.",
        "fr": "Je ne connais pas « {command} ». Essayez « {p} help ».",
    },
    "usage": {"en": "Usage: {usage}", "fr": "Utilisation : {usage}"},
    "need_moderator": {
        "en": "Sorry, only this room's moderators can do that.",
        "fr": "Désolé, seuls les modérateurs de ce salon peuvent faire cela.",
    },
    "need_power": {
        "en": "Sorry, you need power level {level} in this room to do that.",
        "fr": "Désolé, il faut un niveau de pouvoir de {level} dans ce salon pour faire cela.",
    },
    "rate_limited": {
        "en": "Please slow down: at most {count} commands every {seconds} seconds.",
        "fr": "Doucement s’il vous plaît : au plus {count} commandes toutes les "
              "{seconds} secondes.",
    },
    "feed_cap": {
        "en": "This room already follows {count} feeds, the most allowed. Remove one first.",
        "fr": "Ce salon suit déjà {count} flux, le maximum autorisé. Retirez-en un d’abord.",
    },
    "no_feeds": {
        "en": "This room follows no feed yet.",
        "fr": "Ce salon ne suit encore aucun flux.",
    },
    "list_header": {"en": "Feeds of this room:", "fr": "Flux de ce salon :"},
    "list_line": {
        "en": "• {name}: {url}, every {interval}; last success: {success}; "
              "last error: {error}{paused}{origin}",
        "fr": "• {name} : {url}, toutes les {interval} ; dernier succès : {success} ; "
              "dernière erreur : {error}{paused}{origin}",
    },
    "from_config": {"en": " (from the configuration file)",
                    "fr": " (défini dans le fichier de configuration)"},
    "paused_mark": {"en": "; PAUSED", "fr": " ; EN PAUSE"},
    "filters_mark": {"en": "; filters: {filters}", "fr": " ; filtres : {filters}"},
    "never": {"en": "never", "fr": "jamais"},
    "none": {"en": "none", "fr": "aucune"},
    "latest_header": {"en": "The newest items:", "fr": "Les derniers articles :"},
    "latest_empty": {"en": "No item yet.", "fr": "Aucun article pour l’instant."},
    "status_header": {"en": "Feed status:", "fr": "État des flux :"},
    "status_line": {
        "en": "• {name}: last fetch {last}, next fetch {next}, {failures} failure(s) in a row"
              "{state}",
        "fr": "• {name} : dernière lecture {last}, prochaine lecture {next}, "
              "{failures} échec(s) d’affilée{state}",
    },
    "status_gone": {"en": "; stopped: {reason}", "fr": " ; arrêté : {reason}"},
    # Polite polling (bot.feeds.hints): the effective interval and why.
    "status_schedule": {"en": "; {schedule}", "fr": " ; {schedule}"},
    "every": {"en": "every {every} ({why})", "fr": "toutes les {every} ({why})"},
    "base_configured": {"en": "configured {interval}", "fr": "configuré : {interval}"},
    "base_command": {"en": "set by command to {interval}",
                     "fr": "fixé par commande à {interval}"},
    "hint_ttl": {"en": "the feed asks for ttl {minutes} min",
                 "fr": "le flux demande ttl {minutes} min"},
    "hint_sy": {"en": "the feed asks for sy:updatePeriod {period}",
                "fr": "le flux demande sy:updatePeriod {period}"},
    "hint_max_age": {"en": "the server asks for Cache-Control max-age {seconds} s",
                     "fr": "le serveur demande Cache-Control max-age {seconds} s"},
    "hint_capped": {"en": "{hint}, capped at {ceiling} by fetch.max_interval",
                    "fr": "{hint}, plafonné à {ceiling} par fetch.max_interval"},
    "skip_hours": {"en": "no polls at {hours} h UTC", "fr": "pas de lecture à {hours} h UTC"},
    "skip_days": {"en": "no polls on {days} (UTC)", "fr": "pas de lecture le {days} (UTC)"},
    "weekdays": {"en": "Mon,Tue,Wed,Thu,Fri,Sat,Sun", "fr": "lun.,mar.,mer.,jeu.,ven.,sam.,dim."},
    "added": {
        "en": "Added “{name}”: {title} ({count} entries). Its new items will be posted here.",
        "fr": "Flux « {name} » ajouté : {title} ({count} articles). Ses nouveaux articles "
              "seront publiés ici.",
    },
    "add_failed": {
        "en": "I could not add {url}: {reason}",
        "fr": "Je n’ai pas pu ajouter {url} : {reason}",
    },
    "add_needs_admin": {
        "en": "Only newsbot's admins can add the first feed of a room they did not bring "
              "it into.",
        "fr": "Seul·es les admins de newsbot peuvent ajouter le premier flux d’un salon où "
              "ils ne l’ont pas invité.",
    },
    "bad_url": {
        "en": "“{url}” is not a web address (http:// or https://).",
        "fr": "« {url} » n’est pas une adresse web (http:// ou https://).",
    },
    "bad_name": {
        "en": "“{name}” cannot be a feed name: use lowercase letters, digits, “-”, “_” or “.”.",
        "fr": "« {name} » ne peut pas être un nom de flux : utilisez des minuscules, des "
              "chiffres, « - », « _ » ou « . ».",
    },
    "name_taken": {
        "en": "The name “{name}” is already taken; choose another: {p} add URL NAME",
        "fr": "Le nom « {name} » est déjà pris ; choisissez-en un autre : {p} add URL NOM",
    },
    "unknown_feed": {
        "en": "This room has no feed named “{name}”. See {p} list.",
        "fr": "Ce salon n’a pas de flux nommé « {name} ». Voir {p} list.",
    },
    "config_feed": {
        "en": "“{name}” comes from the configuration file: edit that file to remove it "
              "(you can pause it here).",
        "fr": "« {name} » vient du fichier de configuration : modifiez ce fichier pour le "
              "retirer (vous pouvez le mettre en pause ici).",
    },
    "removed": {"en": "Removed “{name}” from this room.",
                "fr": "Flux « {name} » retiré de ce salon."},
    "paused": {"en": "Paused “{name}” in this room.",
               "fr": "Flux « {name} » mis en pause dans ce salon."},
    "resumed": {"en": "Resumed “{name}”: new items will be posted again.",
                "fr": "Flux « {name} » repris : les nouveaux articles seront de nouveau "
                      "publiés."},
    "interval_set": {"en": "“{name}” will be fetched every {interval}.",
                     "fr": "« {name} » sera lu toutes les {interval}."},
    "bad_interval": {
        "en": "“{value}” is not a duration from {minimum} to {maximum} (examples: 30m, 2h).",
        "fr": "« {value} » n’est pas une durée de {minimum} à {maximum} (exemples : 30m, "
              "2h).",
    },
    "filter_set": {
        "en": "“{name}” in this room: {filters}.",
        "fr": "« {name} » dans ce salon : {filters}.",
    },
    "filter_include": {"en": "only items mentioning {words}",
                       "fr": "seulement les articles qui mentionnent {words}"},
    "filter_exclude": {"en": "never items mentioning {words}",
                       "fr": "jamais les articles qui mentionnent {words}"},
    "filter_cleared": {"en": "“{name}” in this room: no filter, every item is posted.",
                       "fr": "« {name} » dans ce salon : aucun filtre, tous les articles "
                             "sont publiés."},
    "lang_set": {"en": "I will speak English in this room.",
                 "fr": "Je parlerai français dans ce salon."},
    "failed": {"en": "Sorry, that did not work: {reason}",
               "fr": "Désolé, cela n’a pas fonctionné : {reason}"},
    "dm_help": {
        "en": "Hello! I can send you the news privately, here.\n"
              "  subscribe [feed]: receive every new item (all feeds if none is named)\n"
              "  unsubscribe [feed]: stop (all feeds if none is named)\n"
              "  digest daily|weekly|off: one message per day or week instead of one per "
              "item\n"
              "  list: the feeds you can follow, and yours\n"
              "  archive [n]: the last n issues\n"
              "  lang fr|en: my language here\n"
              "  forget me: delete everything I store about you\n"
              "I store your Matrix id and these choices, nothing else.",
        "fr": "Bonjour ! Je peux vous envoyer les actualités en privé, ici.\n"
              "  subscribe [flux] : recevoir chaque nouvel article (tous les flux si aucun "
              "n’est nommé)\n"
              "  unsubscribe [flux] : arrêter (tous les flux si aucun n’est nommé)\n"
              "  digest daily|weekly|off : un message par jour ou par semaine au lieu d’un "
              "par article\n"
              "  list : les flux que vous pouvez suivre, et les vôtres\n"
              "  archive [n] : les n derniers numéros\n"
              "  lang fr|en : ma langue ici\n"
              "  forget me : effacer tout ce que je garde sur vous\n"
              "Je garde votre identifiant Matrix et ces choix, rien d’autre.",
    },
    "dm_no_public": {
        "en": "No feed is open to personal subscription here; join its room instead.",
        "fr": "Aucun flux n’est ouvert à l’abonnement personnel ici ; rejoignez plutôt son "
              "salon.",
    },
    "dm_unknown_feed": {
        "en": "There is no feed “{name}” you can follow. Feeds: {feeds}.",
        "fr": "Il n’y a pas de flux « {name} » à suivre. Flux : {feeds}.",
    },
    "dm_subscribed": {
        "en": "Subscribed to {feeds}. New items will come here.",
        "fr": "Abonnement à {feeds} enregistré. Les nouveaux articles arriveront ici.",
    },
    "dm_unsubscribed": {"en": "Unsubscribed from {feeds}.",
                        "fr": "Désabonnement de {feeds} enregistré."},
    "dm_not_subscribed": {"en": "You follow no feed here.",
                          "fr": "Vous ne suivez aucun flux ici."},
    "dm_list": {
        "en": "Feeds you can follow: {feeds}.\nYou follow: {mine}. Digest: {digest}.",
        "fr": "Flux que vous pouvez suivre : {feeds}.\nVous suivez : {mine}. Résumé : {digest}.",
    },
    "dm_digest_set": {
        "en": "Digest: {digest}.", "fr": "Résumé : {digest}."},
    "digest_off": {"en": "off (one message per item)", "fr": "non (un message par article)"},
    "digest_daily": {"en": "daily", "fr": "quotidien"},
    "digest_weekly": {"en": "weekly", "fr": "hebdomadaire"},
    "dm_forgotten": {
        "en": "Done: I deleted everything I stored about you. Goodbye!",
        "fr": "C’est fait : j’ai effacé tout ce que je gardais sur vous. Au revoir !",
    },
    "dm_unknown": {"en": "I don’t know “{command}”. Write “help”.",
                   "fr": "Je ne connais pas « {command} ». Écrivez « help »."},
    "dm_already_open": {
        "en": "We already have a private conversation: write to me there, {link}",
        "fr": "Nous avons déjà une conversation privée : écrivez-moi là-bas, {link}",
    },
    "dm_group": {
        "en": "This conversation has more than two members: I answer personal commands "
              "only in a private conversation with one person (“forget me” works "
              "anywhere).",
        "fr": "Cette conversation compte plus de deux membres : je ne réponds aux "
              "commandes personnelles que dans une conversation privée avec une seule "
              "personne (« forget me » fonctionne partout).",
    },
    "digest_header": {
        "en": "Your {period} digest: {count} new item(s).",
        "fr": "Votre résumé {period} : {count} nouvel(s) article(s).",
    },
    "digest_header_part": {
        "en": "Your {period} digest: {count} new item(s) (part {part} of {parts}).",
        "fr": "Votre résumé {period} : {count} nouvel(s) article(s) (partie {part} sur "
              "{parts}).",
    },
    "archive_header": {"en": "The last issues:", "fr": "Les derniers numéros :"},
    "stats_header": {
        "en": "Readers (members of the feed's rooms, plus personal subscribers):",
        "fr": "Lecteur·ices (membres des salons du flux, plus abonnements personnels) :",
    },
    "stats_line": {"en": "• {name}: {members} room member(s), {subscribers} subscriber(s)",
                   "fr": "• {name} : {members} membre(s) des salons, {subscribers} "
                         "abonnement(s)"},
    "welcome": {
        "en": "Welcome to {room}! Every new issue is posted there. The latest one: {latest}",
        "fr": "Bienvenue dans {room} ! Chaque nouveau numéro y est publié. Le dernier : "
              "{latest}",
    },
    "welcome_nothing": {"en": "nothing yet.", "fr": "rien pour l’instant."},
    "welcome_dm_hint": {
        "en": "\nTo receive them here instead, write “help”.",
        "fr": "\nPour les recevoir ici plutôt, écrivez « help ».",
    },
    "feed_gone": {
        "en": "⚠️ The feed “{name}” ({url}) is gone (HTTP 410 Gone): newsbot has stopped "
              "fetching it. A moderator can give it a new address in the configuration.",
        "fr": "⚠️ Le flux « {name} » ({url}) n’existe plus (HTTP 410 Gone) : newsbot a "
              "cessé de le consulter. Un·e modérateur·ice peut lui donner une nouvelle "
              "adresse dans la configuration.",
    },
    # The end of an announcement room's topic (rooms: topic_latest), after " — ".
    "topic_latest": {"en": "Latest: {item}", "fr": "Dernier numéro : {item}"},
}


def text(key: str, language: str, **values: object) -> str:
    table = MESSAGES[key]
    template = table.get(language) or table["en"]
    return template.format(**values)


def format_duration(seconds: float, language: str) -> str:
    """"15 min", "2 h", "1 h 30 min", "45 s" (the same in both languages)."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours >= 24 and not rest and hours % 24 == 0:
        days = hours // 24
        return f"{days} {'j' if language == 'fr' else 'd'}"
    parts = ([f"{hours} h"] if hours else []) + ([f"{minutes} min"] if minutes else [])
    return " ".join(parts)


def format_time(timestamp: float | None, language: str) -> str:
    """A moment in UTC: "28/11/2026 18:05 UTC" (fr) or "2026-11-28 18:05 UTC" (en)."""
    from datetime import UTC, datetime
    if timestamp is None:
        return text("never", language)
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return "?"
    pattern = "%d/%m/%Y %H:%M UTC" if language == "fr" else "%Y-%m-%d %H:%M UTC"
    return moment.strftime(pattern)
