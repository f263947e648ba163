package guest

// DownloadWithEntries is Download with a smaller entry limit, so a test
// need not make a million files to reach it.
var DownloadWithEntries = download
