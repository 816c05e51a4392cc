"""Prose that fills out the sample handbook: domain paragraphs, FAQ entries and worked cases.

Kept apart from the facts in make_sample.py: nothing here is asked about, so it may vary freely,
but it makes retrieval realistic (documents share vocabulary) and the corpus handbook-sized.
"""

from __future__ import annotations

PARAGRAPHS = {
    "it": [
        "資訊服務處採用工單制度管理所有服務需求，每張工單都有唯一編號，同仁可隨時在員工入口網站查詢處理進度。若工單狀態超過預期時間仍未更新，可直接回覆工單催辦，系統會自動通知當班工程師。",
        "為維護系統穩定，資訊服務處每月第二個星期六凌晨進行例行維護，維護期間部分服務可能短暫中斷。維護公告會在三天前以全員郵件發送，並同步張貼於內部網站首頁。",
        "所有公務設備在交付前皆已安裝端點防護軟體與磁碟加密，請勿自行移除或停用。若因開發需求必須調整安全設定，應先與資訊安全室討論並取得書面同意。",
        "公司的軟體授權多數以人數計算，離職或不再使用時請主動通知資訊服務處收回授權，以免造成不必要的費用。年度授權盤點於每年 11 月進行。",
        "新進同仁的帳號會在報到前一天建立，初始密碼以簡訊傳送至人事資料中登記的手機號碼。首次登入後系統會要求立即變更密碼並設定雙因素驗證。",
        "資訊服務處提供的教學文件與影片集中放在內部知識庫的「IT 小幫手」專區，內容涵蓋常用軟體設定、印表機驅動安裝與遠端會議操作等主題。",
        "外部廠商如需連線至公司系統，必須由業務承辦人提出臨時帳號申請，帳號最長有效三十天，到期後自動失效，不得轉借給其他廠商人員使用。",
        "遇到設備故障時，請先記下錯誤訊息或拍照留存，再提出報修工單，能大幅縮短工程師判斷問題的時間。硬體送修期間，可向服務台借用備用機。",
        "個人資料夾會每日自動備份至公司資料中心，備份保留期限為九十天。誤刪檔案時，可於工單中註明檔案路徑與刪除時間，申請還原。",
        "使用公司網路時，所有連線都會經過防火牆與網頁過濾系統。若業務需要連到被封鎖的網站，可由主管提出例外申請，經資訊安全室評估後開放。",
    ],
    "hr": [
        "人力資源處依勞動基準法及相關法令訂定各項人事規章，規章修訂前會徵詢勞資會議意見，修訂後於內部網站公告並通知全體同仁。",
        "所有假勤申請均透過 HR-Link 人資系統辦理，系統會依假別自動檢查剩餘天數，並將申請送交直屬主管簽核。主管出差時，可由系統設定的代理人代為簽核。",
        "同仁的薪資於每月 5 日發放，若遇例假日則提前至前一個工作日。薪資單以電子方式寄送，同仁可於 HR-Link 下載過去二十四個月的薪資明細。",
        "人力資源處每年第一季舉辦員工意見調查，調查以匿名方式進行，結果彙整後提報經營會議，並於第二季向全體同仁說明改善計畫。",
        "部門主管應於每月最後一個工作日前確認所屬同仁的出勤紀錄，若有異常應於系統中註記原因，逾期未確認者由人力資源處通知補正。",
        "公司重視工作與生活的平衡，鼓勵同仁規劃休假。連續休假五日以上者，請提前與部門主管討論工作交接，並在行事曆上標註代理人。",
        "員工個人資料異動，例如通訊地址、緊急聯絡人或銀行帳戶，應於異動後十日內在 HR-Link 更新，以免影響薪資發放與保險權益。",
        "人力資源處設有員工關懷專線，提供心理諮商、法律諮詢與財務規劃等服務，同仁與家屬每年可免費使用六次，諮詢內容完全保密。",
        "內部職缺會優先在內部招募平台公告十個工作日，任職滿一年且最近一次考核為 B 等以上的同仁可以申請轉調。",
        "離職同仁應於最後工作日前完成離職手續，包括交還識別證、公務設備與門禁卡，並由各單位於離職單上簽認。",
    ],
    "finance": [
        "財務處每月 5 日前完成上月關帳作業，關帳期間新送件的報銷單將順延至次月處理，請同仁盡量避開月初送件。",
        "電子發票請在報銷系統中上傳 PDF 檔，並確認發票上的公司統一編號正確。統一編號錯誤的發票無法入帳，須請開立單位作廢重開。",
        "預算控管以部門為單位，每季初由財務處發布各部門預算執行率，執行率超過九成的科目，後續支出須先經處級主管同意。",
        "以外幣支付的費用，依付款當日臺灣銀行公告的即期賣出匯率換算為新臺幣入帳，匯差由公司負擔。",
        "公司信用卡僅限經核准的業務及採購人員持有，每張卡片的月額度依職務設定，刷卡後應於七日內在系統中補登用途。",
        "財務處每年委請會計師進行年度查核，查核期間可能向各部門調閱單據，請同仁妥善保存原始憑證至少七年。",
        "廠商資料建檔時須提供公司登記資料與匯款帳戶證明，財務處會比對帳戶戶名與公司名稱一致後才會啟用付款。",
        "跨部門分攤的費用，由主辦部門於報銷時註明分攤比例，財務處於月結時依比例轉列至各部門的成本中心。",
    ],
    "facilities": [
        "總務處負責辦公大樓的環境維護、設備修繕與安全管理，報修可透過員工入口網站的「總務服務」提出，一般案件於兩個工作日內派員處理。",
        "每季會進行一次消防演練，演練時請依照逃生路線圖疏散至大樓前方廣場集合，並由各樓層的防護團員清點人數。",
        "辦公室內禁止使用電暖器、電鍋等高耗電器具；茶水間的微波爐與咖啡機每日由清潔人員清理，使用後請保持整潔。",
        "為節約能源，下班時請關閉座位的螢幕與檯燈，最後離開會議室的同仁請關閉空調與投影設備。",
        "公司提供免費的接駁車往返捷運站，早上 8:00 至 9:30 每十五分鐘一班，下午 17:30 至 19:00 每二十分鐘一班。",
        "各樓層設有哺集乳室，需使用者可至服務台登記取得門禁權限。哺集乳室內備有冰箱、洗手台與插座。",
        "辦公用品可在每週二與週四向總務處領取，大量或特殊規格的用品則須透過請購流程辦理。",
        "大樓停車場設有電動車充電位六個，充電以兩小時為一個時段，需事先在總務系統預約。",
    ],
    "security": [
        "資訊安全室每年舉辦兩次全員資安教育訓練，並不定期寄送社交工程演練郵件。點擊演練郵件連結的同仁須於一個月內補修線上課程。",
        "收到可疑郵件時，請勿點擊連結或開啟附件，可使用 Outlook 的「回報釣魚郵件」按鈕直接轉交資訊安全室分析。",
        "離開座位時請鎖定電腦螢幕，Windows 可使用 Win 鍵加 L，macOS 可使用 Control、Command 加 Q。未鎖定的電腦將在十分鐘後自動鎖定。",
        "攜帶公務筆電外出時，應隨身保管，不得將筆電留置於車內。遺失公務設備應立即通報資訊安全室，以便遠端鎖定並清除資料。",
        "USB 隨身碟等可攜式儲存裝置預設為停用，業務上確有需要者，應申請使用公司配發的加密隨身碟。",
        "資訊安全室定期對公司系統進行弱點掃描，發現的高風險弱點須於三十日內完成修補，並在資安管理系統中回報修補結果。",
        "所有系統的存取權限每半年由資料擁有者覆核一次，不再需要的權限應立即移除，覆核結果由資訊安全室彙整存查。",
        "與外部單位交換資料前，應確認對方已簽署保密協議，並依資料等級選擇合適的傳輸方式。",
    ],
    "en": [
        "Staff who do not read Chinese can ask their manager or Human Resources for an English summary of any internal regulation; summaries are provided within five business days.",
        "All policies apply equally to staff on local and expatriate contracts, unless a policy states otherwise.",
        "Questions about this document can be sent to the policy owner by email; answers are shared on the intranet FAQ page so that everyone benefits.",
        "Receipts in languages other than Chinese or English must be accompanied by a short English description of the expense.",
        "The company observes Taiwan's public holidays. Staff from other countries may swap up to two public holidays a year for their own national holidays.",
        "Meetings that include international staff are held in English by default, and minutes are written in English.",
    ],
}

FAQ = {
    "it": [
        (
            "忘記密碼怎麼辦？",
            "可在登入畫面點選「忘記密碼」，以手機簡訊驗證後自行重設；若手機號碼已變更，請攜帶識別證至 3 樓服務台辦理。",
        ),
        (
            "可以用私人電腦處理公務嗎？",
            "原則上不行。確有需要者須安裝公司指定的端點防護軟體，並經資訊安全室檢查後登記。",
        ),
        (
            "工單送出後可以修改嗎？",
            "工單在工程師受理前可自行修改內容；受理後如需補充，請以回覆工單的方式說明。",
        ),
        (
            "出國時可以使用公司服務嗎？",
            "可以，但部分國家的連線可能受限，出國前請先確認遠端連線設定並測試登入。",
        ),
    ],
    "hr": [
        (
            "請假可以事後補登嗎？",
            "臨時請假者可於返回上班後兩個工作日內補登，逾期補登須經處級主管同意。",
        ),
        (
            "主管不在時誰來簽核？",
            "由主管在 HR-Link 中設定的代理人簽核；未設定代理人時，由上一級主管簽核。",
        ),
        (
            "假別選錯了可以改嗎？",
            "尚未核准的假單可自行撤回重送；已核准的假單須請主管退回後再修改。",
        ),
        ("兼職人員適用本規定嗎？", "兼職人員依其勞動契約辦理，契約未約定者比照本規定按比例計算。"),
    ],
    "finance": [
        (
            "發票遺失可以報銷嗎？",
            "可以向開立單位申請發票證明聯；無法取得者應填寫支出證明單並經處級主管核准。",
        ),
        (
            "報銷被退件怎麼辦？",
            "請依退件原因補正後重新送出，系統會保留原送件日期作為期限計算依據。",
        ),
        (
            "可以代墊他人的費用嗎？",
            "原則上由實際支出人報銷；代墊時應於備註欄註明實際使用人與原因。",
        ),
    ],
    "facilities": [
        (
            "辦公室設備壞了找誰？",
            "請透過員工入口網站的「總務服務」報修，緊急狀況可撥打總務處分機 2501。",
        ),
        ("假日可以進辦公室嗎？", "可以，但須於前一個工作日向總務處申請，並由主管核准。"),
        ("可以在辦公室養植物嗎？", "可以擺放小型盆栽，但請勿放在走道或消防設備前方。"),
    ],
    "security": [
        (
            "懷疑帳號被盜用怎麼辦？",
            "請立即變更密碼並通報資訊安全室，資訊安全室會協助檢查登入紀錄。",
        ),
        (
            "可以使用免費的線上翻譯服務嗎？",
            "內部以上等級的資料不得貼到外部線上服務，請使用公司提供的翻譯工具。",
        ),
        ("資安事件通報後會被懲處嗎？", "主動通報不會因通報行為受罰；隱匿不報者依工作規則處理。"),
    ],
    "en": [
        (
            "Is this policy available in Chinese?",
            "Yes. The Chinese version is the reference text; this English version is provided for convenience.",
        ),
        (
            "Who can approve an exception?",
            "Exceptions are approved by the division head of the requester, in writing.",
        ),
    ],
}

CASES_ZH = [
    "{who}（{dept}）於 {date}遇到相關需求，依本文件辦理後順利完成。過程中{who}事先確認了適用條件，避免了退件。",
    "舉例來說，{dept}的{who}在 {date}提出申請，因資料齊全，承辦人當天即完成初審。",
    "{date}，{dept}曾有同仁因未依規定辦理而被退回，後來在{who}協助下重新送件完成。",
    "{who}（{dept}）在 {date}送出申請時漏填了成本中心代碼，系統自動退件；補填後隔天即完成簽核。",
    "{date}，{dept}一次為五位新進同仁提出申請，承辦人建議改用批次申請功能，{who}之後的同類申請都改以批次辦理。",
    "{dept}的{who}於 {date}才發現附件上傳錯誤，主管退回後重新上傳，整體進度延後了兩個工作天。",
]
CASES_EN = [
    "For example, {who} from {dept} followed these steps on {date} and had the request completed without delay.",
    "On {date}, a request from {dept} was returned because a document was missing; {who} resubmitted it the same day.",
    "{who} ({dept}) sent a request on {date} without the manager's approval attached; it was put on hold until the approval arrived two days later.",
    "On {date}, {dept} asked for an exception ahead of a client visit; {who} recorded the reason and the exception was granted for one week.",
]
DEPTS_EN = ["Sales", "Research & Development", "Finance", "Legal", "Customer Success"]
NAMES_EN = ["Alice Chen", "Brian Lin", "Grace Wu", "Kevin Huang", "Monica Tsai"]
