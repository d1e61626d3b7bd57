"""`ingester-gateway upload FILE`: a resumable upload over tus 1.0, one file at a time.

command.py   arguments, exit codes, what is printed
options.py   the upload options as tus Upload-Metadata (the server's own rules)
rules.py     the client's protocol rules: parts, answers judged, retry budget (pure)
resume.py    the local record of uploads in flight, to resume after a stop
source.py    the file's byte ranges, read in blocks off the event loop, paced
transport.py the tus requests (aiohttp)
progress.py  the progress bar (tqdm)
uploader.py  the upload from creation to the file id artStore gave it
"""
